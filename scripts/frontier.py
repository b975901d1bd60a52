"""The time-accuracy frontier of the top of the ladder: recipes at several epoch budgets over seeds, test accuracy
against the seconds of the whole run, and for a budget of N minutes the recipe that gives the most.

    python scripts/frontier.py run --image-folder ../shared/data/cifar10-jpeg --out ~/frontier   # hours; resumes
    python scripts/frontier.py draw --out ~/frontier --picture docs/frontier.png                # the picture, a table

`run` trains, one command at a time, each line's `main.py V [--set ...] --set epochs=E1,E2,... --seeds 0-2` into a
results folder of its own (OUT/LINE), which the runner resumes: stop it at any moment and run the same command
again. Time nothing else on the machine meanwhile. `draw` reads each folder's runs.csv: a run's seconds are its
training, its tests and the final test (runs.csv's `seconds`), without the process's start-up and the data's loading.
"""
import argparse
import csv
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.comparisons import interval_of_mean  # noqa: E402

# Each line: its results folder under OUT -> (its name in the picture and tables, the version it trains, settings
# beside the epochs, the epochs), run in this order. Version 15 is version 14 at 7 epochs: a point of 14's line.
LINES = {
    "v14": ("version 14", 14, (), (6, 7, 8, 14)),
    "v14-narrow": ("14, blocks 64/128/128", 14, ("model.widths=64x128x128",), (8, 12, 14)),
    "v13": ("version 13", 13, (), (2, 4, 6)),
    "v12": ("version 12", 12, (), (2, 4, 6)),
}
SEEDS = "0-2"
BUDGETS = (3, 5, 8, 10, 15, 20)  # minutes, for the table


def run(args) -> int:
    for line, (_, version, settings, epochs) in LINES.items():
        if args.lines and line not in args.lines:
            continue
        command = [sys.executable, str(ROOT / "main.py"), str(version)]
        for setting in settings:
            command += ["--set", setting]
        command += ["--set", "epochs=" + ",".join(map(str, epochs)), "--seeds", SEEDS, "--image-folder",
                    args.image_folder, "--out", str(args.out / line), "--quiet"]
        print(" ".join(command[1:]), flush=True)
        if subprocess.run(command).returncode != 0:
            return 1
    return 0


def points(out: Path) -> dict:
    """{(line, epochs): ([accuracy by seed], [seconds by seed])} of the finished runs under out, a line being a
    results folder's name."""
    found = defaultdict(lambda: ([], []))
    for table in sorted(out.glob("*/runs.csv")):
        with open(table, newline="") as f:
            for row in csv.DictReader(f):
                if row["status"] != "ok" or not row["test_acc"]:
                    continue
                epochs = int(row["arm"].split("epochs=")[1].split()[0])
                accuracies, seconds = found[table.parent.name, epochs]
                accuracies.append(float(row["test_acc"]))
                seconds.append(float(row["seconds"]))
    return dict(found)


def title(line: str) -> str:
    return LINES[line][0] if line in LINES else line


def in_order(key: tuple) -> tuple:
    """LINES' order, then any other folder by name; each line's points by epochs."""
    line, epochs = key
    return (list(LINES).index(line) if line in LINES else len(LINES), line, epochs)


def summary(found: dict) -> list:
    """One row per (line, epochs): mean accuracy with its 95% interval, mean seconds, seeds."""
    rows = []
    for (line, epochs), (accuracies, seconds) in sorted(found.items(), key=lambda item: in_order(item[0])):
        interval = interval_of_mean(accuracies)
        rows.append(dict(line=line, epochs=epochs, accuracy=statistics.fmean(accuracies),
                         low=interval[0] if interval else None, high=interval[1] if interval else None,
                         seconds=statistics.fmean(seconds), seeds=len(accuracies)))
    return rows


def best_within(rows: list, minutes: float) -> dict | None:
    """The most accurate (by mean) recipe whose mean seconds fit the budget."""
    fitting = [row for row in rows if row["seconds"] <= 60 * minutes]
    return max(fitting, key=lambda row: row["accuracy"]) if fitting else None


def markdown(rows: list) -> str:
    lines = ["| recipe | epochs | seeds | test accuracy (95% interval) | seconds |", "|---|---|---|---|---|"]
    for row in rows:
        interval = f" [{row['low']:.4f}, {row['high']:.4f}]" if row["low"] is not None else ""
        lines.append(f"| {title(row['line'])} | {row['epochs']} | {row['seeds']} | {row['accuracy']:.4f}{interval} | "
                     f"{row['seconds']:,.0f} |")
    lines += ["", "| budget | the most accurate recipe within it |", "|---|---|"]
    for minutes in BUDGETS:
        best = best_within(rows, minutes)
        lines.append(f"| {minutes} min | " + (f"{title(best['line'])}, {best['epochs']} epochs: "
                                               f"{best['accuracy']:.4f} in {best['seconds']:,.0f} s |" if best
                                               else "none measured |"))
    return "\n".join(lines)


def draw(args) -> int:
    rows = summary(points(args.out))
    if not rows:
        print(f"error: no finished runs under {args.out} (run `scripts/frontier.py run` first)", file=sys.stderr)
        return 1
    from runner import plots

    lines = {}
    for row in rows:
        lines.setdefault(title(row["line"]), []).append((row["seconds"], row["accuracy"], row["low"], row["high"],
                                                         row["epochs"]))
    with open(args.picture, "wb") as f:
        plots.save(plots.frontier_figure(lines), f)
    print(markdown(rows))
    return 0


def line_list(text: str) -> list:
    names = text.split(",")
    for name in names:
        if name not in LINES:
            raise argparse.ArgumentTypeError(f"no line {name!r}: choose from {', '.join(LINES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from running it, so that the manual's commands can be checked against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("run", help="train each line's budgets over seeds (resumes)")
    train.add_argument("--image-folder", required=True, help="the CIFAR-10 image folder")
    train.add_argument("--lines", type=line_list,
                       help=f"only these lines, e.g. v13,v14 (default: all of them: {', '.join(LINES)})")
    shown = commands.add_parser("draw", help="the picture and the tables from the finished runs")
    shown.add_argument("--picture", type=Path, default=ROOT / "docs" / "frontier.png")
    for command in (train, shown):
        command.add_argument("--out", type=Path, required=True, help="the folder of the versions' results folders")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    return run(args) if args.command == "run" else draw(args)


if __name__ == "__main__":
    sys.exit(main())
