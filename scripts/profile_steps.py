"""Where a version's training steps and test pass spend their time on this machine, by torch.profiler: the
convolutions, BatchNorm and GELU (forward and backward, by operator), the optimizer step, the lookahead, the data
gather, and the rest; in fp32 and in bfloat16 autocast. Synthetic images of the version's shape.

Then the arithmetic: the network's floating-point operations per image (torch's FLOP counter), the rate the
profiled steps reached on them, this machine's rate on one large matrix product (near what its vector units can
do at all), and the time a whole run's arithmetic takes at the better of the two rates: a floor that faster
feeding, fusion or compilation cannot go below, only less arithmetic or narrower numbers.

    python scripts/profile_steps.py --version 13 --steps 8 --threads 2
"""
import argparse
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench import synthetic_split  # noqa: E402
from configs import VERSIONS  # noqa: E402
from models import build_model, fit_input_layers  # noqa: E402
from runner.devices import prepare_torch  # noqa: E402
from runner.loaders import BatchPlan, ResidentLoader, augmentation_of  # noqa: E402
from runner.settings import DATASETS  # noqa: E402
from runner.state import TrainingState  # noqa: E402
from train import autocast, on_device, to_model_input, train_step, tta_output, uses_channels_last  # noqa: E402

OPERATORS = {"convolutions": ("convolution",), "BatchNorm": ("batch_norm",), "GELU": ("gelu",)}
REGIONS = ("data gather", "lookahead", "Optimizer.step")  # record_function labels (the optimizer's is torch's own)
TEST_IMAGES = 10_000  # the test split of MNIST, Fashion-MNIST and CIFAR-10 alike


@dataclass
class Profile:
    train: dict  # milliseconds per training step, by category
    train_total: float
    test: dict  # milliseconds per test batch (no test-time augmentation), by category
    test_total: float
    train_gflop: float  # per image: a training step's forward and backward
    test_gflop: float  # per image: a per-epoch test pass
    final_gflop: float  # per image: the final test pass, with the recipe's test-time augmentation


def category_times(events, regions: tuple) -> dict:
    """Milliseconds per category: operators by the self time of their kernels, regions by their whole time."""
    times = {name: 0.0 for name in (*OPERATORS, *regions)}
    for event in events:
        for name, keys in OPERATORS.items():
            if event.key.startswith("aten::") and any(key in event.key for key in keys):
                times[name] += event.self_cpu_time_total / 1000
        for region in regions:
            if event.key.startswith(region):
                times[region] += event.cpu_time_total / 1000
    return times


def gflop(counter: FlopCounterMode, images: int) -> float:
    return counter.get_total_flops() / images / 1e9


def profile_version(version: int, steps: int, amp: bool) -> Profile:
    row = VERSIONS[version]
    channels = DATASETS[row.dataset].channels
    split = synthetic_split(channels, DATASETS[row.dataset].size)
    torch.manual_seed(0)
    model = build_model(row.recipe, channels, DATASETS[row.dataset].classes)
    fit_input_layers(model, split.images, torch.Generator().manual_seed(0))
    device = torch.device("cpu")
    model = on_device(model, device)
    plan = BatchPlan(len(split.labels), row.recipe.batch_size, row.recipe.drop_last)
    state = TrainingState(version, row.recipe, model, device, 0, len(plan))
    state.amp = amp
    loader = ResidentLoader(split, plan, device, state.generators["shuffle"], augmentation_of(row.recipe,
                                                                                              state.generators))
    batches = itertools.chain.from_iterable(loader.batches(epoch) for epoch in itertools.count(1))
    state.epoch = max(row.recipe.lookahead_from, 1)  # so that the lookahead, if the recipe has one, runs
    channels_last = uses_channels_last(model)

    def step():
        with record_function("data gather"):
            images, labels, divisor = next(batches)
            images, labels = to_model_input(images, labels, device, channels_last)
        state.begin_step()
        train_step(state, images, labels, divisor)
        with record_function("lookahead"):
            state.end_step()

    with FlopCounterMode(display=False) as counted:  # the first warm-up step
        step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as trained:
        with record_function("all"):
            for _ in range(steps):
                step()
    test_batch = next(batches)[0][:row.recipe.batch_size]
    model.eval()
    with torch.no_grad(), autocast(device, amp):
        with FlopCounterMode(display=False) as tested_once:
            tta_output(model, test_batch, "none")
        with FlopCounterMode(display=False) as final:
            tta_output(model, test_batch, row.recipe.tta)
        with profile(activities=[ProfilerActivity.CPU]) as tested:
            with record_function("all"):
                for _ in range(steps):
                    tta_output(model, test_batch, "none")
    train_events, test_events = trained.key_averages(), tested.key_averages()
    train_total = next(event for event in train_events if event.key == "all").cpu_time_total / 1000
    test_total = next(event for event in test_events if event.key == "all").cpu_time_total / 1000
    per_step = {name: value / steps for name, value in category_times(train_events, REGIONS).items()}
    per_batch = {name: value / steps for name, value in category_times(test_events, ()).items()}
    return Profile(per_step, train_total / steps, per_batch, test_total / steps, gflop(counted, row.recipe.batch_size),
                   gflop(tested_once, len(test_batch)), gflop(final, len(test_batch)))


def matmul_gflops(dtype: torch.dtype, size: int = 4096, repeats: int = 5) -> float:
    left, right = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    left @ right
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        left @ right
        seconds.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(seconds) / 1e9


def print_arithmetic(version: int, results: dict) -> None:
    recipe = VERSIONS[version].recipe
    dataset = DATASETS[VERSIONS[version].dataset]
    images = sum(dataset.class_sizes)
    trained = images - images % recipe.batch_size if recipe.drop_last else images
    first = next(iter(results.values()))
    run_gflop = (recipe.epochs * (trained * first.train_gflop + TEST_IMAGES * first.test_gflop)
                 + TEST_IMAGES * first.final_gflop)
    print(f"\nGFLOP per image: training step {first.train_gflop:.3f}, test pass {first.test_gflop:.3f}, final test "
          f"pass {first.final_gflop:.3f}; a whole run ({recipe.epochs} epochs of {trained:,} images, a test pass each, "
          f"the final one) {run_gflop / 1e3:,.0f} TFLOP\n")
    print("| numerics | convolutions in training steps, GFLOP/s | one 4096x4096 matrix product, GFLOP/s "
          "| a whole run's arithmetic at the better rate, s |")
    print("|---|---|---|---|")
    for numerics, result in results.items():
        rate = result.train_gflop * recipe.batch_size / (result.train["convolutions"] / 1000)
        peak = matmul_gflops(torch.bfloat16 if numerics == "bf16" else torch.float32)
        print(f"| {numerics} | {rate:.0f} | {peak:.0f} | {run_gflop / max(rate, peak):,.0f} |")


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from running it, so that the manual's commands can be checked against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", type=int, default=13)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    prepare_torch(torch.device("cpu"), args.threads, deterministic=False)
    results = {numerics: profile_version(args.version, args.steps, numerics == "bf16")
               for numerics in ("fp32", "bf16")}
    batch = VERSIONS[args.version].recipe.batch_size
    print(f"| version {args.version}, batch {batch}, ms | " + " | ".join(
        f"train step {numerics} | test batch {numerics}" for numerics in results) + " |")
    print("|---|" + "---|---|" * len(results))
    names = list(results["fp32"].train)
    for name in names + ["other", "total"]:
        cells = []
        for result in results.values():
            if name == "total":
                cells += [f"{result.train_total:.0f}", f"{result.test_total:.0f}"]
            elif name == "other":
                cells += [f"{result.train_total - sum(result.train.values()):.0f}",
                          f"{result.test_total - sum(result.test.values()):.0f}"]
            else:
                cells += [f"{result.train[name]:.0f}", f"{result.test[name]:.0f}" if name in result.test else "-"]
        label = "optimizer step" if name == "Optimizer.step" else name
        print(f"| {label} | " + " | ".join(cells) + " |")
    print_arithmetic(args.version, results)


if __name__ == "__main__":
    main()
