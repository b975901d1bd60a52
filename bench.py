"""Training throughput: the resident pipeline against the classic DataLoader loop, in one process, interleaved.

    python bench.py --versions 1,3,6,9 --data-dir ../shared/data --image-folder ../shared/data/cifar10-jpeg
    python bench.py --synthetic

For each version it times the same training steps (after warm-up) fed three ways: by our resident loader, by the
seed's torchvision DataLoader (PIL + ToTensor in 4 workers), and from one fixed batch already on the device (the
model-only ceiling). Each is repeated, in a rotating order, and the median reported. Run it on an otherwise idle machine.
"""
import argparse
import statistics
import sys
import time
import warnings

import torch
from torchvision.transforms import ToTensor

import train
from configs import DATASETS, VERSIONS
from data import DataSource, ResidentLoader, Split, SplitDataset, classic_loader, load_split
from data import torchvision_dataset
from errors import RunnerError
from main import default_cache_dir, device_name, positive_int, version_list
from models import build_model

SYNTHETIC_IMAGES = 10_000


def synthetic_split(channels: int, size: int) -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (SYNTHETIC_IMAGES, channels, size, size), dtype=torch.uint8, generator=generator)
    return Split(images, torch.randint(0, 10, (SYNTHETIC_IMAGES,), generator=generator), [str(i) for i in range(10)])


def sources_for(version: int, args: argparse.Namespace):
    """(resident split, classic dataset) of the version's training data."""
    dataset = VERSIONS[version].dataset
    channels, size = DATASETS[dataset].channels, DATASETS[dataset].size
    if args.synthetic:
        split = synthetic_split(channels, size)
        return split, SplitDataset(split, ToTensor())
    folder = args.image_folder if dataset == "cifar10" else None
    source = DataSource(dataset, args.data_dir, folder, args.cache_dir)
    return load_split(source, True), torchvision_dataset(source, True, ToTensor())


def timed_steps(model, optimizer, batches, device, steps: int, warmup: int, amp: bool) -> float:
    """Images per second over `steps` training steps, after `warmup` untimed ones."""
    batches = iter(batches)
    channels_last = train.uses_channels_last(model)
    total = torch.zeros((), device=device)
    seen = 0
    for step in range(warmup + steps):
        if step == warmup:
            total.item()
            started = time.perf_counter()
            seen = 0
        images, labels = train.to_model_input(*next(batches), device, channels_last)
        loss, _ = train.train_step(model, optimizer, images, labels, amp)
        total += loss
        seen += len(labels)
    total.item()
    return seen / (time.perf_counter() - started)


def repeat_batch(images: torch.Tensor, labels: torch.Tensor):
    while True:
        yield images, labels


def bench_version(version: int, args: argparse.Namespace, device: torch.device) -> dict:
    row = VERSIONS[version]
    split, classic_dataset = sources_for(version, args)
    torch.manual_seed(0)
    model = build_model(row.model, row.model_args).to(device)
    if train.uses_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[row.optimizer](model.parameters(), lr=row.lr)
    step_model = torch.compile(model) if args.compile else model
    resident = ResidentLoader(split, args.batch_size, device, torch.Generator().manual_seed(0))
    fixed = next(iter(resident))
    feeds = {
        "ours": lambda: resident,
        "classic": lambda: classic_loader(classic_dataset, args.batch_size, device, torch.Generator().manual_seed(0),
                                          shuffle=True),
        "model": lambda: repeat_batch(*fixed),
    }
    rates = {name: [] for name in feeds}
    names = list(feeds)
    for repeat in range(args.repeats):
        for name in names[repeat % 3:] + names[:repeat % 3]:
            feed = feeds[name]
            rates[name].append(timed_steps(step_model, optimizer, feed(), device, args.steps, args.warmup, args.amp))
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=version_list, default=version_list("all"), help="e.g. 1,3,6-9 (all)")
    parser.add_argument("--steps", type=positive_int, default=100, help="timed steps per measurement (100)")
    parser.add_argument("--warmup", type=positive_int, default=10, help="untimed steps first (10)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="measurements per feed; median (5)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", type=device_name, default="auto")
    parser.add_argument("--data-dir", default="data", help="MNIST and Fashion-MNIST (and CIFAR-10) folder")
    parser.add_argument("--image-folder", help="image folder for the CIFAR-10 versions, e.g. a cifar10-jpeg tree")
    parser.add_argument("--cache-dir", default=default_cache_dir())
    parser.add_argument("--synthetic", action="store_true", help="random images of each version's shape")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # the seed's 4 workers, kept on purpose
    try:
        device = train.resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} steps after {args.warmup} warm-up, median of {args.repeats}"
          f"{', synthetic data' if args.synthetic else ''}{', amp' if args.amp else ''}"
          f"{', compile' if args.compile else ''}", flush=True)
    print("| version | device | images/s ours | images/s classic | ratio | images/s model only | ours / model only |")
    print("|---|---|---|---|---|---|---|")
    for version in args.versions:
        try:
            rates = bench_version(version, args, device)
        except RunnerError as error:
            print(f"error: version {version}: {error}", file=sys.stderr)
            return 1
        print(f"| {version} | {device} | {rates['ours']:,.0f} | {rates['classic']:,.0f} | "
              f"{rates['ours'] / rates['classic']:.1f}x | {rates['model']:,.0f} | "
              f"{rates['ours'] / rates['model']:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
