"""Training throughput: the resident pipeline against the classic DataLoader loop, in one process, interleaved.

    python bench.py --versions 1,3,6,9 --data-dir ../shared/data --image-folder ../shared/data/cifar10-jpeg
    python bench.py --synthetic

For each version it times the same training steps (after warm-up) fed three ways: by our resident loader (with the
version's augmentation, on the device), by the seed's torchvision DataLoader (PIL and torchvision transforms in 4
workers), and from one fixed batch already on the device (the model-only ceiling); and a fourth, our loader feeding
the model compiled by torch.compile (its compilation, the first compiled step, timed apart). Each is repeated, in a
rotating order, and the median reported. The batch is the version's own unless --batch-size says otherwise. Run it
on an otherwise idle machine.
"""
import argparse
import itertools
import statistics
import sys
import time

import torch

from configs import VERSIONS
from data import Split, classic_dataset, load_split
from runner.devices import prepare_torch, resolve_device
from runner.errors import RunnerError
from runner.loaders import BatchPlan, ClassicLoader, ResidentLoader, SplitDataset, augmentation_of, classic_transform
from runner.train_command import version_list
from models import build_model, fit_input_layers
from runner.settings import DATASETS, default_cache_dir, device_name, positive_int, worker_count
from runner.sources import DataSource
from runner.state import TrainingState
from train import on_device, to_model_input, train_step, uses_channels_last

SYNTHETIC_IMAGES = 10_000


def synthetic_split(channels: int, size: int) -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (SYNTHETIC_IMAGES, channels, size, size), dtype=torch.uint8, generator=generator)
    return Split(images, torch.randint(0, 10, (SYNTHETIC_IMAGES,), generator=generator), [str(i) for i in range(10)])


def training_data(version: int, args: argparse.Namespace):
    """(resident split, classic dataset) of the version's training data, the classic one with its transforms."""
    row = VERSIONS[version]
    channels, size = DATASETS[row.dataset].channels, DATASETS[row.dataset].size
    transform = classic_transform(size, row.recipe.crop_padding, row.recipe.flip, False)
    if args.synthetic:
        split = synthetic_split(channels, size)
        return split, SplitDataset(split, transform)
    folder = args.image_folder if row.dataset == "cifar10" else None
    source = DataSource(row.dataset, args.data_dir, folder, args.cache_dir)
    return load_split(source, True), classic_dataset(source, True, transform)


def timed_steps(state: TrainingState, batches, steps: int, warmup: int) -> float:
    """Images per second over `steps` training steps, after `warmup` untimed ones."""
    channels_last = uses_channels_last(state.model)
    total = torch.zeros((), device=state.device)
    seen = 0
    for step in range(warmup + steps):
        if step == warmup:
            total.item()
            started = time.perf_counter()
            seen = 0
        images, labels, divisor = next(batches)
        images, labels = to_model_input(images, labels, state.device, channels_last)
        state.begin_step()
        loss, _ = train_step(state, images, labels, divisor)
        state.end_step()
        total += loss
        seen += len(labels)
    total.item()
    return seen / (time.perf_counter() - started)


def every_epoch(loader):
    return itertools.chain.from_iterable(loader.batches(epoch) for epoch in itertools.count(1))


def bench_version(version: int, args: argparse.Namespace, device: torch.device) -> dict:
    row = VERSIONS[version]
    recipe = row.recipe
    split, classic = training_data(version, args)
    batch_size = args.batch_size or recipe.batch_size
    torch.manual_seed(0)
    model = build_model(recipe, DATASETS[row.dataset].channels, DATASETS[row.dataset].classes)
    fit_input_layers(model, split.images, torch.Generator().manual_seed(0))
    model = on_device(model, device)
    plan = BatchPlan(len(split.labels), batch_size, recipe.drop_last)
    state = TrainingState(version, recipe, model, device, 0, len(plan))
    compiled = TrainingState(version, recipe, model, device, 0, len(plan))  # the same weights, stepped compiled
    state.amp = compiled.amp = args.amp
    compiled.step_model = torch.compile(model)
    resident = ResidentLoader(split, plan, device, state.generators["shuffle"],
                              augmentation_of(recipe, state.generators))
    fixed = next(resident.batches())
    feeds = {
        "ours": (state, lambda: every_epoch(resident)),
        "classic": (state, lambda: every_epoch(ClassicLoader(classic, plan, device, state.generators["shuffle"],
                                                             state.generators["workers"]))),
        "model": (state, lambda: itertools.repeat(fixed)),
        "compiled": (compiled, lambda: every_epoch(resident)),
    }
    rates = {name: [] for name in feeds}
    names, compile_seconds = list(feeds), None
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            stepping, batches = feeds[name]
            if stepping is compiled and compile_seconds is None:
                started = time.perf_counter()
                timed_steps(compiled, itertools.repeat(fixed), 1, 0)  # the first compiled step compiles
                compile_seconds = time.perf_counter() - started
            rates[name].append(timed_steps(stepping, batches(), args.steps, args.warmup))
    return {name: statistics.median(values) for name, values in rates.items()} | {
        "batch": batch_size, "compile": compile_seconds}


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from running it, so that the manual's commands can be checked against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=version_list, default=version_list("all"), help="e.g. 1,3,6-9 (all)")
    parser.add_argument("--steps", type=positive_int, default=100, help="timed steps per measurement (100)")
    parser.add_argument("--warmup", type=positive_int, default=10, help="untimed steps first (10)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="measurements per feed; median (5)")
    parser.add_argument("--batch-size", type=positive_int, help="batch size (default: each version's own)")
    parser.add_argument("--threads", type=worker_count, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", type=device_name, default="auto")
    parser.add_argument("--data-dir", default="data", help="MNIST and Fashion-MNIST (and CIFAR-10) folder")
    parser.add_argument("--image-folder", help="image folder for the CIFAR-10 versions, e.g. a cifar10-jpeg tree")
    parser.add_argument("--cache-dir", default=default_cache_dir())
    parser.add_argument("--synthetic", action="store_true", help="random images of each version's shape")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    return parser


def main(argv: list | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    prepare_torch(device, args.threads, deterministic=False)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps after {args.warmup} warm-up, median of {args.repeats}"
          f"{', synthetic data' if args.synthetic else ''}{', amp' if args.amp else ''}", flush=True)
    print("| version | device | batch | images/s ours | images/s classic | ratio | images/s model only "
          "| ours / model only | images/s ours compiled | compiled / ours | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for version in args.versions:
        try:
            rates = bench_version(version, args, device)
        except RunnerError as error:
            print(f"error: version {version}: {error}", file=sys.stderr)
            return 1
        print(f"| {version} | {device} | {rates['batch']} | {rates['ours']:,.0f} | {rates['classic']:,.0f} | "
              f"{rates['ours'] / rates['classic']:.1f}x | {rates['model']:,.0f} | "
              f"{rates['ours'] / rates['model']:.0%} | {rates['compiled']:,.0f} | "
              f"{rates['compiled'] / rates['ours']:.2f}x | {rates['compile']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
