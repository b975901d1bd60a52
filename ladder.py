"""What a ladder is written with: configs.py writes the built-in one with it, and a ladder file of your own writes
yours (`python main.py --ladder my_ladder.py list`; docs/extending.md):

    from torch import nn
    from ladder import builtin, image_folder, model, rung

    @model(takes=(1, 28))
    class TinyNet(nn.Module):
        def __init__(self, width: int = 16, classes: int = 10): ...   # ends in log_softmax

    rung(1, "fashion_mnist", {"tiny net": {"model": "TinyNet"}}, epochs=5)
    rung(2, "fashion_mnist", {"wider": {"model.width": 32}})
    rung(3, "cifar10", {"cutout": {"batch_transform": "cutout"}}, parent=builtin(13))
    rung(4, image_folder("~/flowers", size=32), {}, parent=builtin(13))  # its own images and classes

A row grows from its parent (the row written before it, unless `parent=` names an earlier row or a built-in
version) by its ideas, each a named group of settings in --set's notation. `model` and `batch_transform` register
a class or function under its name; the arguments of its signature that have defaults and types (int, float, bool,
str, tuple[int, ...]) become --set arguments (model.NAME, batch_transform.NAME). This module imports no torch.
"""
import collections
import inspect
import math
import os
import typing
from dataclasses import dataclass, replace

from runner.errors import DataError, RunnerError
from runner.folders import list_image_folder, split_folder
from runner.overrides import SetError, apply, check_settings
from runner.settings import (DATASETS, MODEL_KINDS, REGISTERED, TRANSFORM_KINDS, Dataset, ModelKind, Range,
                             Recipe, TransformKind, Version)

BUILT_IN: dict = {}  # configs.py's rows
VERSIONS: dict = {}  # the rows this process runs: the built-in ones, or a ladder file's (see runner/ladder_files.py)
SOURCE: dict = {}  # the ladder file this process runs, {"file": absolute path, "sha256": ...}; {} for the built-in
# Names the runner gives a model or a batch transform itself, from the data and the run.
MODEL_GIVEN = {"self", "classes", "in_channels"}
TRANSFORM_GIVEN = {"images", "labels", "classes", "generator"}


class LadderError(RunnerError):
    """A ladder that cannot be run; the message says what is wrong in it and what to do (a usage error: exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Builtin:
    """A built-in version named as the parent of a ladder file's row: `parent=builtin(13)`."""

    number: int

    def __str__(self) -> str:
        return f"built-in {self.number}"


def builtin(number: int) -> Builtin:
    """Built-in version `number` (see: python main.py list), as a row's parent."""
    if number not in BUILT_IN:
        raise LadderError(f"builtin({number}): there is no built-in version {number} (they are "
                          f"{min(BUILT_IN)}-{max(BUILT_IN)})")
    return Builtin(number)


PREVIOUS = object()  # rung's default parent: the row written before (none for the first)
_writing: dict = BUILT_IN  # the ladder rung() adds rows to (runner/ladder_files.py points it at a file's)
_from_file: list = []  # (table, name) of each entry a ladder file added to the registries or the datasets
KINDS = {"model": MODEL_KINDS, "batch_transform": TRANSFORM_KINDS}


def use_built_in() -> None:
    """Make the built-in ladder the one this process runs again, forgetting what a ladder file added (a process
    may run main more than once); nothing to do when no file was read."""
    if not SOURCE and not _from_file:
        return
    for table, name in _from_file:
        table.pop(name, None)
    _from_file.clear()
    VERSIONS.clear()
    VERSIONS.update(BUILT_IN)
    SOURCE.clear()


def add(table: dict, name: str, entry) -> None:
    """An entry of a registry or the datasets, remembered when a ladder file adds it."""
    table[name] = entry
    if _writing is not BUILT_IN:
        _from_file.append((table, name))


def register(registry: str, name: str, kind, made) -> None:
    add(KINDS[registry], name, kind)
    add(REGISTERED[registry], name, made)


FOLDER_PREFIX = "folder:"  # + an image folder's absolute path: the name of a dataset image_folder() made


def image_folder(path: str, size: int, channels: int = 3) -> str:
    """A folder of images per class (PATH/train/<class>/*, PATH/test/<class>/*) as a row's dataset: its images are
    size x size with `channels` channels (1: grey, 3: RGB; --resize resizes others as they are decoded), its classes
    its class folders. Returns the dataset's name, for rung()."""
    folder = os.path.abspath(os.path.expanduser(path))
    if channels not in (1, 3) or not isinstance(size, int) or size < 1:
        raise LadderError(f"image_folder({path!r}): give size= a whole number of pixels and channels= 1 or 3")
    try:
        classes, samples = list_image_folder(split_folder(folder, True))
        _, tests = list_image_folder(split_folder(folder, False))
    except DataError as error:
        raise LadderError(f"image_folder({path!r}): {error}") from None
    counts = collections.Counter(label for _, label in samples)
    name = FOLDER_PREFIX + folder
    add(DATASETS, name, Dataset(os.path.basename(folder), channels, size,
                                tuple(counts[index] for index in range(len(classes))), len(tests)))
    return name


def folder_of(dataset: str) -> str | None:
    """The image folder a dataset made by image_folder() reads, or None for a dataset by name."""
    return dataset[len(FOLDER_PREFIX):] if dataset.startswith(FOLDER_PREFIX) else None


def parent_row(row: Version) -> Version | None:
    if isinstance(row.parent, Builtin):
        return BUILT_IN[row.parent.number]
    return None if row.parent is None else VERSIONS[row.parent]


def rung(number: int, dataset: str, ideas: dict, params: int | None = None, reference: tuple | None = None,
         remark: str = "", reference_source: str = "seed", epochs: int | None = None, autocast: bool | None = None,
         seconds: float | None = None, tflop: float | None = None, parent=PREVIOUS) -> None:
    """Add row `number`: its parent's recipe with `ideas` applied (a first row without a parent: the seed's
    recipe, an MLP). `params`: the exact parameter count, checked when given; `reference`: (train, test) accuracy it
    is compared with; `epochs`: its own number of epochs (default: an idea's, or the parent's); `autocast`:
    bfloat16 by default where the device computes in it (default: as its parent); `seconds`: one epoch measured on
    the 2-core CPU, for --dry-run's estimates; `tflop`: the arithmetic of a whole run, shown by `list` and checked
    when given."""
    where = f"row {number}"
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise LadderError(f"rung({number!r}, ...): a row's number is a whole number of 1 or more")
    if number in _writing:
        raise LadderError(f"{where} is written twice: give each row its own number")
    if dataset not in DATASETS:
        named = [name for name in DATASETS if not folder_of(name)]
        raise LadderError(f"{where}: no dataset {dataset!r} (choose one of {', '.join(named)}, or give "
                          "image_folder(PATH, size=N))")
    if parent is PREVIOUS:
        parent = list(_writing)[-1] if _writing else None
    elif not isinstance(parent, Builtin) and parent not in _writing:
        raise LadderError(f"{where}: parent={parent!r} is no earlier row of this ladder; name one, or a built-in "
                          "version as parent=builtin(N)")
    grown_from = None if parent is None else BUILT_IN[parent.number] if isinstance(parent, Builtin) else \
        _writing[parent]
    if not isinstance(ideas, dict) or not all(isinstance(settings, dict) for settings in ideas.values()):
        raise LadderError(f"{where}: ideas are a dict of named settings, e.g. {{'wider': {{'model.width': 32}}}}")
    try:
        for idea, settings in ideas.items():
            check_settings(settings, f"{where}, idea {idea!r}")
        recipe = grown_from.recipe if grown_from else Recipe("MLP")
        recipe = apply(recipe, {name: value for settings in ideas.values() for name, value in settings.items()})
    except SetError as error:
        raise LadderError(str(error)) from None
    if epochs:
        if any("epochs" in settings for settings in ideas.values()):
            raise LadderError(f"{where}: an idea sets its epochs already; give them once, in the idea or as "
                              "epochs=")
        recipe = replace(recipe, epochs=epochs)
    if autocast is None:
        autocast = bool(grown_from and grown_from.autocast)
    _writing[number] = Version(number, dataset, recipe, params, reference, remark, reference_source, parent, ideas,
                               autocast, seconds, tflop)


def arguments_of(function, given: set, where: str) -> dict:
    """The --set arguments a class's constructor or a function takes: name -> (type, range, default), a default of
    None meaning required; every argument the runner does not give itself needs a type it can parse."""
    kinds = {int: int, float: float, bool: bool, str: str}
    arguments = {}
    try:
        parameters = inspect.signature(function, eval_str=True).parameters.values()
    except (NameError, TypeError, ValueError) as error:
        raise LadderError(f"{where}: its arguments' types cannot be read ({error})") from None
    for parameter in parameters:
        if parameter.name in given or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = parameter.annotation
        if annotation in kinds:
            kind, limits = kinds[annotation], None
        elif typing.get_origin(annotation) is tuple and typing.get_args(annotation) in ((int, ...), ()):
            kind, limits = list, Range()
        else:
            shown = "no type" if annotation is parameter.empty else f"the type {annotation}"
            raise LadderError(f"{where}: argument {parameter.name} has {shown}; annotate it as int, float, bool, "
                              "str or tuple[int, ...] so that --set can give it")
        default = None if parameter.default is parameter.empty else parameter.default
        if isinstance(default, float) and not math.isfinite(default):
            raise LadderError(f"{where}: argument {parameter.name}'s default must be finite")
        arguments[parameter.name] = (kind, limits, tuple(default) if isinstance(default, list) else default)
    return arguments


def model(takes: tuple | None = None):
    """Register an nn.Module class under its name, as `"model": "NAME"` in a row's ideas or --set model=NAME.
    `takes`: the images it takes, (channels, size), or None for any (it gets `in_channels`). Its constructor may
    take `classes` (the dataset's class count) and `in_channels`; it returns log-probabilities (log_softmax)."""
    if takes is not None and not (isinstance(takes, tuple) and len(takes) == 2 and all(
            isinstance(value, int) and value > 0 for value in takes)):
        raise LadderError(f"model(takes={takes!r}): give (channels, size), e.g. (3, 32), or None for any")

    def register_class(cls):
        name = getattr(cls, "__name__", repr(cls))
        where = f"model {name}"
        if not inspect.isclass(cls):
            raise LadderError(f"{where}: @model registers a class (an nn.Module)")
        if name in MODEL_KINDS:
            raise LadderError(f"{where}: the name is taken by another model; rename the class")
        register("model", name, ModelKind(arguments_of(cls.__init__, MODEL_GIVEN, where), takes), cls)
        return cls

    return register_class


def batch_transform(name: str):
    """Register a function under `name`, as `"batch_transform": "NAME"` in a row's ideas or --set. It is called on
    each training batch, on the device: f(images, labels, classes, generator, **arguments) -> (images, targets),
    with float images in [0, 1] of shape (N, C, H, W), int64 labels, and a CPU torch.Generator the checkpoint keeps
    (draw with it only). Targets are the labels, or class probabilities (N, classes) summing to one."""
    def register_function(function):
        where = f"batch transform {name!r}"
        if not isinstance(name, str) or not name.isidentifier():
            raise LadderError(f"{where}: name it with letters, digits and underscores")
        if name in TRANSFORM_KINDS or name == "none":
            raise LadderError(f"{where}: the name is taken by another batch transform; choose another")
        missing = TRANSFORM_GIVEN - set(inspect.signature(function).parameters)
        if missing:
            raise LadderError(f"{where}: it must take {', '.join(sorted(missing))} (see: ladder.batch_transform)")
        register("batch_transform", name, TransformKind(arguments_of(function, TRANSFORM_GIVEN, where)), function)
        return function

    return register_function
