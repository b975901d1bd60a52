"""Start-up time: from process start to the end of the first training step of `python main.py 1`, against a bare
`python -c "import torch"`, measured alternately in one run (median of --repeats), plus the slowest imports on the
way (python -X importtime).

    python scripts/startup.py --data-dir ../shared/data

The dataset is decoded into the cache first, so the runs measured find it there, as every run after the first does.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import sys, time
sys.path.insert(0, {root!r})
import train
real = train.train_step

def first(*args):
    result = real(*args)
    print("first step done at", time.time(), flush=True)
    sys.exit(0)

train.train_step = first
import main
main.main(sys.argv[1:])
"""


def seconds_to_first_step(argv: list, importtime: bool = False) -> tuple[float, str]:
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", PROBE.format(root=str(ROOT)),
               *argv]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    done = [line for line in result.stdout.splitlines() if line.startswith("first step done at")]
    if not done:
        raise SystemExit(f"the probe did not reach a training step: {result.stderr.strip()[-500:]}")
    return float(done[0].split()[-1]) - started, result.stderr


def seconds_to_import_torch() -> tuple[float, float]:
    """(until torch is imported, until the process has ended)."""
    started = time.time()
    result = subprocess.run([sys.executable, "-c", "import time, torch; print(time.time())"], check=True,
                            capture_output=True, text=True, timeout=300)
    return float(result.stdout) - started, time.time() - started


def slowest_imports(stderr: str, count: int) -> list:
    """(cumulative seconds, module) of the slowest top-level imports in -X importtime output."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name.startswith("  "):
                rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:count]


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from running it, so that the manual's commands can be checked against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory() as work:
        argv = ["1", "--epochs", "1", "--data-dir", args.data_dir, "--out", os.path.join(work, "run"), "--force",
                "--quiet"]
        seconds_to_first_step(argv)  # fills the dataset cache
        imported, ended, step_times = [], [], []
        for _ in range(args.repeats):
            import_time, exit_time = seconds_to_import_torch()
            imported.append(import_time)
            ended.append(exit_time)
            step_times.append(seconds_to_first_step(argv)[0])
        _, imports = seconds_to_first_step(argv, importtime=True)
    first = statistics.median(step_times)
    print(f"main.py 1, process start to the end of the first step: median {first:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in step_times)})")
    for label, times in (("torch imported", imported), ("the process ended", ended)):
        bare = statistics.median(times)
        print(f"python -c 'import torch', process start to {label}: median {bare:.2f} s; ratio {first / bare:.2f}")
    print("slowest top-level imports on the way (cumulative seconds, one run with -X importtime):")
    for seconds, module in slowest_imports(imports, 8):
        print(f"  {seconds:6.2f}  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
