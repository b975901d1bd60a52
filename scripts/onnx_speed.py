"""Inference throughput of an exported run: ONNX Runtime against PyTorch eager on the same uint8 batches, both on the
CPU with the same threads, no test-time augmentation; medians over repeats, and their ratio measured in the same run.

    python scripts/onnx_speed.py RUN_DIR [RUN_DIR ...] --threads 2 --repeats 7
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402

from runner.export import MODEL_FILE, PixelModel  # noqa: E402
from runner.records import RunFolder  # noqa: E402
from runner.saved import load_trained  # noqa: E402
from runner.settings import DATASETS  # noqa: E402


def images_per_second(run, batch: np.ndarray, repeats: int) -> float:
    """Median images per second of `run(batch)` over `repeats` timed calls, after one warm-up call."""
    run(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - started)
    return len(batch) / statistics.median(times)


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from running it, so that the manual's commands can be checked against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders exported with main.py export")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", default="1,256", help="batch sizes (default 1,256)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    print("| run | model | batch | PyTorch eager (images/s) | ONNX Runtime (images/s) | ratio |")
    print("|---|---|---|---|---|---|")
    for path in args.runs:
        folder = RunFolder(Path(path))
        run = folder.read_config()
        model, _ = load_trained(folder, run, torch.device("cpu"))
        eager = PixelModel(model, "none").eval()
        session = onnxruntime.InferenceSession(str(folder.path / MODEL_FILE), options,
                                               providers=["CPUExecutionProvider"])
        channels, size = DATASETS[run.dataset].channels, DATASETS[run.dataset].size
        for batch_size in map(int, args.batches.split(",")):
            batch = np.random.default_rng(0).integers(0, 256, (batch_size, channels, size, size), dtype=np.uint8)
            with torch.no_grad():
                theirs = images_per_second(lambda pixels: eager(torch.from_numpy(pixels)), batch, args.repeats)
            ours = images_per_second(lambda pixels: session.run(None, {"pixels": pixels}), batch, args.repeats)
            print(f"| {folder.path.name} | {run.recipe.model} | {batch_size} | {theirs:,.0f} | {ours:,.0f} | "
                  f"{ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
