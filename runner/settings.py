"""The three kinds of settings a run has, as types, and the command-line flags that follow from them.

- Recipe: what a version's row fixes (model, optimizer, loss, batch, epochs, schedule, augmentation, weight
  averaging, test-time augmentation). Its defaults are the seed's recipe, so rows 1-9 name only what differs.
- RunIdentity: what is fixed once a run has started; a results folder refuses a run whose identity differs.
- Runtime: what may change when a run is resumed, even on another machine.

A field with `option(...)` metadata gets a command-line flag; a Recipe field marked `grows=True` is the only part
of a recipe that --resume may change (upwards). Nothing else lists field names: the parser, the resume rules and
the results folder's comparison all read these types. This module imports no torch, so usage errors stay fast.
"""
import argparse
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields

TOOL = "basic-image-classification"


TTA_KINDS = ("none", "mirror", "mirror+shift")  # test-time augmentations: a recipe's, or eval --tta's


@dataclass(frozen=True)
class Dataset:
    title: str
    channels: int
    size: int
    class_sizes: tuple  # training images per class, so that a --holdout is checked before any data is read
    test_images: int

    @property
    def classes(self) -> int:
        return len(self.class_sizes)


DATASETS = {
    "mnist": Dataset("MNIST", 1, 28, (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949), 10000),
    "fashion_mnist": Dataset("Fashion-MNIST", 1, 28, (6000,) * 10, 10000),
    "cifar10": Dataset("CIFAR-10", 3, 32, (5000,) * 10, 10000),
    "cifar100": Dataset("CIFAR-100", 3, 32, (500,) * 100, 10000),
    "svhn": Dataset("SVHN", 3, 32, (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659), 26032),
}


def whole_number(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low} or more" if high is None else f"between {low} and {high}"
        raise argparse.ArgumentTypeError(f"'{text}' must be {bounds}")
    return value


LARGEST_INT = 2 ** 31 - 1  # what torch and C take as an int
MOST_WORKERS = 1024  # threads or processes on one machine


def positive_int(text: str) -> int:
    return whole_number(text, 1, LARGEST_INT)


def worker_count(text: str) -> int:
    """Threads or processes on one machine."""
    return whole_number(text, 1, MOST_WORKERS)


def seed_number(text: str) -> int:
    return whole_number(text, 0, 2 ** 63 - 1)


def learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be a finite number above 0")
    return value


def device_name(text: str) -> str:
    """auto, cpu, mps, cuda, cuda:K, or a list of CUDA devices (cuda:0,cuda:1: one process each)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?|cuda:\d+(,cuda:\d+)+", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a device: use auto, cpu, cuda, cuda:K, mps or a list "
                                         "such as cuda:0,cuda:1")
    if any(int(index) > LARGEST_INT for index in re.findall(r"\d+", text)):
        raise argparse.ArgumentTypeError(f"'{text}': a device number is at most {LARGEST_INT}")
    if len(set(text.split(","))) != len(text.split(",")):
        raise argparse.ArgumentTypeError(f"'{text}' names a device twice")
    return text


def option(flag: str, help: str, parse=None, metavar: str = "N", choices: tuple = (), grows: bool = False,
           negatable: bool = False) -> dict:
    """Field metadata: the field is set by `flag` (a switch when parse and choices are both empty; a negatable
    switch also has --no-NAME, and neither leaves the choice to the version and the device)."""
    return {"flag": flag, "help": help, "parse": parse, "metavar": metavar, "choices": choices, "grows": grows,
            "negatable": negatable}


@dataclass(frozen=True)
class Range:
    """The values a number may take: from `low` (excluded when `above`) up to `high` (excluded when `below`)."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False

    def holds(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or (value < self.high if self.below else value <= self.high)

    def __str__(self) -> str:
        def number(value) -> str:
            return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"

        words = []
        if self.low is not None:
            words.append(f"{'above' if self.above else 'at least'} {number(self.low)}")
        if self.high is not None:
            words.append(f"{'below' if self.below else 'at most'} {number(self.high)}")
        return " and ".join(words)


def accepts(*choices: str, within: Range | None = None) -> dict:
    """Field metadata for `--set`: the choices a text field takes, or the range of a number."""
    return {"choices": choices, "range": within}


AT_LEAST_0, AT_LEAST_1, ABOVE_0 = Range(0), Range(1), Range(0, above=True)
FRACTION = Range(0, 1, below=True)  # 0 <= x < 1


@dataclass(frozen=True)
class ModelKind:
    """A model family as the command line sees it, without importing torch: the arguments `--set model.NAME=...`
    may give, each (type, range, default; a list type holds whole numbers, a default of None means required), and
    the images it takes as (channels, size), or None for any (it pools its features globally, so patch whitening
    can go in front of it). tests/test_sweeps.py checks these against the models' own signatures."""

    arguments: dict
    takes: tuple | None

    @property
    def required(self) -> list:
        return [name for name, (_, _, default) in self.arguments.items() if default is None]


MODEL_KINDS = {
    "MLP": ModelKind({"hidden": (int, AT_LEAST_1, 100)}, (1, 28)),
    "SmallConvNet": ModelKind({"channels": (int, AT_LEAST_1, 16)}, (1, 28)),
    "WideConvNet": ModelKind({}, (1, 28)),
    "ConvNet4": ModelKind({"width": (int, AT_LEAST_1, None), "hidden": (int, AT_LEAST_1, None),
                           "batch_norm": (bool, None, False), "dropout": (float, FRACTION, 0.0)}, (3, 32)),
    "AirbenchNet": ModelKind({"widths": (list, AT_LEAST_1, (64, 256, 256)),
                              "momentum": (float, Range(0, 1, above=True), 0.4), "scale": (float, ABOVE_0, 1 / 9)},
                             None),
}


@dataclass(frozen=True)
class TransformKind:
    """A batch transform as the command line sees it: the arguments `--set batch_transform.NAME=...` may give, as
    ModelKind's."""

    arguments: dict

    @property
    def required(self) -> list:
        return [name for name, (_, _, default) in self.arguments.items() if default is None]


# Batch transforms by name: the built-in ones (runner/batch_transforms.py) and a ladder file's register here.
TRANSFORM_KINDS: dict = {}
# What registered names build: a ladder file's model classes, and every batch transform's function.
REGISTERED = {"model": {}, "batch_transform": {}}


@dataclass(frozen=True)
class Recipe:
    """How a version trains. Learning rates are PyTorch's, for a loss averaged over the batch."""

    model: str = field(metadata=accepts())  # choices: MODEL_KINDS when read (ladder files register more)
    model_args: dict = field(default_factory=dict)
    # muon: PyTorch's Muon over the convolution filters, SGD (the settings below) over the other parameters
    optimizer: str = field(default="sgd", metadata=accepts("sgd", "adam", "muon"))
    lr: float = field(default=0.01, metadata=option(
        "--lr", "learning rate; the peak of a schedule (recipe: see list)", learning_rate, "X") | accepts(
        within=ABOVE_0))
    momentum: float = field(default=0.0, metadata=accepts(within=FRACTION))
    nesterov: bool = False  # needs momentum
    # PyTorch's (coupled) weight decay of the main parameter group
    weight_decay: float = field(default=0.0, metadata=accepts(within=AT_LEAST_0))
    # BatchNorm biases learn this much faster, with the same decay per step
    norm_bias_lr_scale: float = field(default=1.0, metadata=accepts(within=ABOVE_0))
    # Muon's peak learning rate, (Nesterov) momentum and decoupled weight decay (optimizer=muon)
    muon_lr: float = field(default=0.24, metadata=accepts(within=ABOVE_0))
    muon_momentum: float = field(default=0.6, metadata=accepts(within=FRACTION))
    muon_weight_decay: float = field(default=0.1, metadata=accepts(within=AT_LEAST_0))
    label_smoothing: float = field(default=0.0, metadata=accepts(within=FRACTION))
    batch_size: int = field(default=64, metadata=option("--batch-size", "batch size (recipe: see list)",
                                                        positive_int) | accepts(within=Range(1, LARGEST_INT)))
    drop_last: bool = False  # drop the last partial batch of each epoch
    epochs: int = field(default=25, metadata=option(
        "--epochs", "epochs to train; with --resume a larger N extends a finished run", positive_int, grows=True)
        | accepts(within=Range(1, LARGEST_INT)))
    # learning-rate factor at the first step, rising linearly to 1 over warmup_fraction of all steps, then falling
    # linearly to final_lr_factor at the last step
    warmup_start: float = field(default=1.0, metadata=accepts(within=ABOVE_0))
    warmup_fraction: float = field(default=0.0, metadata=accepts(within=FRACTION))
    final_lr_factor: float = field(default=1.0, metadata=accepts(within=AT_LEAST_0))
    normalize: bool = False  # per-channel mean and std of the training split, as the model's first layer
    whitening: bool = False  # a frozen 2x2 patch-whitening convolution (and GELU) in front of the model
    # its bias trains only during these first epochs
    whitening_bias_epochs: int = field(default=3, metadata=accepts(within=AT_LEAST_0))
    # the first early_epochs epochs train on images resized on the device to early_size x early_size (bilinear,
    # antialiased): cheaper steps while the network learns coarse features (0: every epoch at the images' size)
    early_size: int = field(default=0, metadata=accepts(within=AT_LEAST_0))
    early_epochs: int = field(default=0, metadata=accepts(within=AT_LEAST_0))
    # random crop from the image reflect-padded by this many pixels (less than the image's size)
    crop_padding: int = field(default=0, metadata=accepts(within=AT_LEAST_0))
    # none | random (each image, each epoch) | alternating (a random half, then all, in turn)
    flip: str = field(default="none", metadata=accepts("none", "random", "alternating"))
    # from this epoch on, lookahead weight averaging every 5 steps (0: off)
    lookahead_from: int = field(default=0, metadata=accepts(within=AT_LEAST_0))
    # test-time augmentation of the final test
    tta: str = field(default="none", metadata=accepts(*TTA_KINDS))
    # a registered function applied to each training batch on the device (mixup, cutmix, cutout, or a ladder
    # file's): choices are "none" and TRANSFORM_KINDS when read
    batch_transform: str = field(default="none", metadata=accepts("none"))
    batch_transform_args: dict = field(default_factory=dict)

    @property
    def scheduled(self) -> bool:
        return self.warmup_start != 1.0 or self.final_lr_factor != 1.0

    def image_size(self, epoch: int, size: int) -> int:
        """The size training images have in `epoch` (from 1), for images of `size`."""
        return self.early_size if self.early_size and epoch <= self.early_epochs else size


@dataclass(frozen=True)
class RunIdentity:
    """What a run keeps from start to end; `data` describes the data source (set when the data is known)."""

    seed: int = field(default=0, metadata=option("--seed", "seed for torch, numpy and python (default 0)",
                                                 seed_number))
    loader: str = field(default="resident", metadata=option(
        "--loader", "resident: whole dataset on the device (default); torchvision: the classic DataLoader",
        metavar="L", choices=("resident", "torchvision")))
    # resolved: --amp, --no-amp, or where neither is given the version's default on a device that computes in
    # bfloat16 (see devices.resolve_amp)
    amp: bool = field(default=False, metadata=option(
        "--amp", "bfloat16 autocast on (--amp) or off (--no-amp); by default on for the versions that gain from it "
        "(see list) where the device computes in bfloat16", negatable=True))
    compile: bool = field(default=False, metadata=option(
        "--compile", "torch.compile the model for the run's life (changes numerics in the last bits)"))
    deterministic: bool = field(default=False, metadata=option(
        "--deterministic", "torch's deterministic algorithms (CUDA: slower, repeatable)"))
    sync_bn: bool = field(default=False, metadata=option(
        "--sync-bn", "BatchNorm statistics over every process's share of the batch (CUDA, several processes)"))
    resize: bool = field(default=False, metadata=option(
        "--resize", "resize an image folder's images to the version's size (antialiased) as they are decoded"))
    holdout: int = field(default=0, metadata=option(
        "--holdout", "hold out N training images (stratified by class) and report accuracy on them, not on the "
        "test split, which is then never read", positive_int))
    holdout_seed: int = field(default=0, metadata=option(
        "--holdout-seed", "which images --holdout takes (default 0; the same for every --seed)", seed_number, "S"))
    data: dict = field(default_factory=dict)
    # the ladder file whose row this is, {"file": absolute path, "sha256": its hash}; {} for a built-in row
    ladder: dict = field(default_factory=dict)

    @property
    def evaluated(self) -> str:
        """The split each epoch is tested on: "val" (the held-out training images) under --holdout, else "test"."""
        return "val" if self.holdout else "test"


@dataclass(frozen=True)
class Runtime:
    """How and where a run executes: free to change on --resume."""

    device: str = field(default="auto", metadata=option(
        "--device", "auto (default), cpu, cuda, cuda:K, mps, or cuda:0,cuda:1,... (one process each)", device_name,
        "D"))
    threads: int | None = field(default=None, metadata=option("--threads", "CPU threads for torch", worker_count))
    data_dir: str = field(default="data", metadata=option(
        "--data-dir", "where datasets are found or downloaded (default ./data)", str, "DIR"))
    image_folder: str | None = field(default=None, metadata=option(
        "--image-folder", "use DIR/train/<class>/* and DIR/test/<class>/* instead of the version's dataset", str,
        "DIR"))
    cache_dir: str | None = field(default=None, metadata=option(
        "--cache-dir", "decoded datasets and image folders (default $XDG_CACHE_HOME/basic-image-classification, "
        "else ~/.cache/basic-image-classification)", str, "DIR"))
    eval_every: int = field(default=1, metadata=option(
        "--eval-every", "test every K epochs (default 1; the last epoch is always tested)", positive_int, "K"))
    quiet: bool = field(default=False, metadata=option("--quiet", "no progress bars"))
    rank: int = 0
    world_size: int = 1


SETTINGS = (Recipe, RunIdentity, Runtime)


def shared_gpu(device: str, processes: int) -> str:
    """Why several processes on one machine cannot take one `cuda:K` between them."""
    return (f"--device {device}: the {processes} processes on this machine would share one GPU; give --device cuda "
            "(each takes the GPU of its LOCAL_RANK) or a list of devices")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, TOOL)


@dataclass(frozen=True)
class Version:
    """A row of the ladder: its dataset, recipe, exact parameter count and the accuracies it is compared with; the
    row it grew from (`parent`) and the ideas it adds to it, each a name and its recipe settings in --set's
    notation ({"batch norm": {"model.batch_norm": True}}). configs.py makes the recipe from those two."""

    number: int
    dataset: str
    recipe: Recipe
    params: int
    reference: tuple | None  # (train accuracy, test accuracy); None until a run of ours measured it
    remark: str
    reference_source: str = "seed"  # seed: the seed's published numbers; ours: a run of ours (see docs/results.md)
    parent: int | None = None
    ideas: dict = field(default_factory=dict)
    # bfloat16 autocast by default where the device computes in it: measured as accurate as fp32, and faster
    autocast: bool = False
    # seconds per epoch (training and its test) of the row's recipe measured on the 2-core CPU of docs/results.md;
    # None: not measured
    epoch_seconds: float | None = None
    # the arithmetic of a whole run in TFLOP, as runner/arithmetic.py counts it; None: not counted
    tflop: float | None = None


def flag_fields(kind: type) -> list:
    """The fields of a settings type that a command-line flag sets."""
    return [f for f in fields(kind) if "flag" in f.metadata]


def resumable_names() -> set:
    """Destinations of the flags that --resume accepts: every runtime flag and the recipe fields that may grow."""
    return {f.name for f in flag_fields(Runtime)} | {f.name for f in flag_fields(Recipe) if f.metadata["grows"]}


def was_given(value) -> bool:
    """A parsed flag's value, given on the command line: not its default None or an unset switch (0 is a value)."""
    return value is not None and value is not False


def flag_given(setting, value) -> bool:
    """Whether a setting's flag was given: a negatable switch's False is its --no- form."""
    return was_given(value) or (setting.metadata["negatable"] and value is False)


def flag_words(setting, value) -> list:
    """The command-line words that give a setting this value."""
    if value is True or value is False:
        return [setting.metadata["flag"].replace("--", "--" if value else "--no-", 1)]
    return [setting.metadata["flag"], value]


def given(kind: type, values: dict) -> dict:
    """The flags of `kind` that were given among parsed values."""
    return {f.name: values[f.name] for f in flag_fields(kind) if flag_given(f, values.get(f.name))}


def from_record(kind: type, record: dict, **defaults):
    """A settings object from a saved dict: unknown keys are ignored, missing ones take their defaults, so
    records written before a field existed still load."""
    known = {f.name for f in fields(kind)}
    values = {**defaults, **{name: value for name, value in record.items() if name in known}}
    required = [f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise KeyError(f"{kind.__name__} lacks {', '.join(missing)}")
    return kind(**values)


def differences(ours, theirs) -> list:
    """(name, ours, theirs) for every field where two settings objects of one type differ."""
    return [(f.name, getattr(ours, f.name), getattr(theirs, f.name)) for f in fields(ours)
            if getattr(ours, f.name) != getattr(theirs, f.name)]



@dataclass
class RunConfig:
    """One run: a version's recipe with the overrides given, its identity and its runtime."""

    version: int
    dataset: str
    recipe: Recipe
    identity: RunIdentity
    runtime: Runtime
    overrides: dict = field(default_factory=dict)
    arm: dict = field(default_factory=dict)  # the --set settings of this run's arm, e.g. {"lr": 0.1}
    idea: str = ""  # an ablation's arm: "without lookahead", "with whitening" ("" otherwise)

    @property
    def fixed_length(self) -> bool:
        """A schedule or lookahead spans the run's steps, so its epochs cannot change once it has started."""
        return self.recipe.scheduled or self.recipe.lookahead_from > 0
