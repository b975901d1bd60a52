"""The training command: its parsers (`main.py VERSIONS` and `main.py ablate V`), and the command run from its
words, by main.py and by each Slurm task (which therefore never imports main.py). No torch is imported until the
checks pass, so usage errors answer at once; --dry-run then prints the plan (dry_run.py) and imports none at all."""
import argparse
import os
import re
from pathlib import Path

from runner import ablations
from runner import checks
from runner import overrides
from configs import VERSIONS
from runner.settings import SETTINGS, Recipe, RunIdentity, Runtime, flag_fields, seed_number, worker_count

GROUP_TITLES = {
    Recipe: "recipe (default: the version's own; see: main.py list)",
    RunIdentity: "fixed for a run (a results folder or --resume refuses a change)",
    Runtime: "runtime (may change on --resume)",
}
DOCUMENTATION = """documentation, beside main.py:
  README.md      what the runner is, setting it up, a first run, the ladder and its results, a map of docs/
  docs/          a page per task: running and records, experiments, many runs, export, speed, results, design
  CHANGELOG.md   what each release changed: commands, flags and their meanings, checkpoint formats
"""
EXAMPLES = """commands:
  main.py VERSIONS [options]           train and test: 9 | 1,3 | 6-9 | 1,3,6-9 | all
  main.py list                         the version table
  main.py fields                       every recipe field --set can give: type, default, values, versions
  main.py ablate V [--add]             V, V without each of its ideas, and its parent (see main.py ablate -h)
  main.py --resume RUN_DIR [--epochs N] continue a run (a larger N extends a finished one)
  main.py status RESULTS_DIR           a table's runs: finished, running (where), failed, waiting
  main.py eval RUN_DIR                 test a saved run: per-class accuracy and confusion.png
  main.py export RUN_DIR [--tta]       the run's model as ONNX (model.onnx), checked in ONNX Runtime
  main.py predict RUN_DIR IMAGE...     top-3 classes for each image

examples:
  python main.py 9
  python main.py 1 --epochs 2 --data-dir ../shared/data
  python main.py 6-13 --image-folder ../shared/data/cifar10-jpeg

""" + DOCUMENTATION


def version_list(text: str) -> list[int]:
    """'9', '1,3', '6-9', '1,3,6-9' or 'all' -> the version numbers, in order, each once."""
    if text == "all":
        return sorted(VERSIONS)
    numbers = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise argparse.ArgumentTypeError(f"'{text}' is not a version list: use e.g. 9, 1,3, 6-9 or all")
        low, high = int(match[1]), int(match[2] or match[1])
        if low > high or low not in VERSIONS or high not in VERSIONS:
            raise argparse.ArgumentTypeError(f"version '{part.strip()}' does not exist: versions are "
                                             f"{min(VERSIONS)}-{max(VERSIONS)} (see: python main.py list)")
        numbers += [n for n in range(low, high + 1) if n not in numbers]
    return numbers


def seed_list(text: str) -> list[int]:
    """'0,1,2', '0-4' or '0-2,7' -> the seeds, in order; each at most once."""
    seeds = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        first, last = seed_number(low), seed_number(high) if dash else seed_number(low)
        if last < first:
            raise argparse.ArgumentTypeError(f"'{part.strip()}' is an empty range of seeds")
        if last - first >= 10_000:
            raise argparse.ArgumentTypeError(f"'{part.strip()}' is over 10,000 seeds")
        seeds += range(first, last + 1)
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"'{text}' repeats a seed")
    return seeds


class Parser(argparse.ArgumentParser):
    """argparse's parser; under several processes only the first prints a usage error (all exit 2), and with
    torchrun's restarts every process leaves the error in --out (whichever torchrun stops first), so that
    restarted processes end at once."""

    def error(self, message: str):
        out = getattr(self, "out", None)
        if out and "RANK" in os.environ and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0:
            from runner.records import leave_failure_marker

            leave_failure_marker(Path(out), message)
        if os.environ.get("RANK", "0") != "0":
            self.exit(2)
        super().error(message)


def add_setting(group, setting) -> None:
    meta = setting.metadata
    if meta["choices"]:
        group.add_argument(meta["flag"], dest=setting.name, choices=meta["choices"], help=meta["help"])
    elif meta["parse"] is None:
        action = argparse.BooleanOptionalAction if meta["negatable"] else "store_true"
        group.add_argument(meta["flag"], dest=setting.name, action=action, default=None, help=meta["help"])
    else:
        group.add_argument(meta["flag"], dest=setting.name, type=meta["parse"], metavar=meta["metavar"],
                           help=meta["help"])


def one_version(text: str) -> list[int]:
    """A version that `ablate` can take apart, as a one-item version list."""
    versions = version_list(text)
    if len(versions) != 1:
        raise argparse.ArgumentTypeError(f"'{text}': ablate takes one version")
    try:
        ablations.check_ablatable(versions[0])
    except overrides.SetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return versions


def build_parser(ablate: bool = False) -> argparse.ArgumentParser:
    """The training command's parser; with `ablate`, that of `main.py ablate V`, which takes one version."""
    if ablate:
        parser = Parser(prog="main.py ablate", usage="%(prog)s V [--add] [options]", description=(
            "Test the ideas a version adds to its parent (see: main.py list): V, V without each idea, and the "
            "parent; with --add, the parent and the parent with each idea alone. Every arm trains for V's epochs "
            "(where an idea sets them, the parent and the arms without it: the parent's) into one results folder, "
            "and each is compared with V (with --add, with the parent)."),
            epilog=DOCUMENTATION, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        parser.add_argument("ablated", type=one_version, metavar="V", help="the version whose ideas to test "
                            f"({ablations.ablatable()}: those whose parent trains on the same dataset)")
        parser.add_argument("--add", action="store_true", help="add each idea alone to the parent instead of "
                            "taking it out of V")
        parser.set_defaults(versions=None)  # the versions of its arms, once checks.py has planned them
    else:
        parser = Parser(
            prog="main.py", usage="%(prog)s [VERSIONS | list | fields | ablate V | status RESULTS_DIR | "
            "eval RUN_DIR | predict RUN_DIR IMAGE... | export RUN_DIR] [options]",
            description="Train and test the versions of the image-classification ablation ladder.",
            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        parser.add_argument("versions", nargs="?", type=version_list, metavar="VERSIONS",
                            help=f"versions to run: 9, 1,3, 6-9, 1,3,6-9 or all ({min(VERSIONS)}-{max(VERSIONS)})")
        parser.set_defaults(add=False, ablated=None)
    parser.set_defaults(ablate=ablate)
    for kind in SETTINGS:
        group = parser.add_argument_group(GROUP_TITLES[kind])
        for setting in flag_fields(kind):
            add_setting(group, setting)
        if kind is Recipe:
            group.add_argument("--set", action="append", metavar="NAME=VALUE", help=(
                "any recipe field or model argument (model.NAME), repeatable; a comma list sweeps, e.g. --set "
                "lr=0.1,0.2 --set model.dropout=0.2 (see: main.py fields)"))
        if kind is RunIdentity:
            group.add_argument("--seeds", type=seed_list, metavar="S,S,...",
                               help="train each version once per seed (0,1,2 or 0-4) and report the mean with its "
                               "95%% interval, and paired differences between rows")
        if kind is Runtime:
            group.add_argument("--procs", type=worker_count, metavar="N",
                               help="processes on this machine, as torchrun --nproc_per_node N (see "
                               "docs/many-runs.md)")
    add_ladder_option(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and do nothing: each run's folder, "
                        "what it holds, its epochs and an estimate of its time (no torch imported, no image decoded, "
                        "nothing written, launched or submitted)")
    record = parser.add_argument_group("records")
    record.add_argument("--out", metavar="DIR", help="run folder (one version) or results folder (several)")
    record.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    record.add_argument("--force", action="store_true", help="start over in folders that hold runs of this tool")
    record.add_argument("--fail-fast", action="store_true", help="a sweep or table stops at its first failed run, "
                        "in every copy started with --fail-fast (by default the other runs go on)")
    record.add_argument("--retry-failed", action="store_true", help="a table tries its runs that failed for good "
                        "(e.g. diverged, or met damaged data) again; other copies skip them")
    record.add_argument("--lease", type=lease_seconds, metavar="SECONDS", help="a table's copies take a run over "
                        "when its owner's heartbeat stood still this long (default 180)")
    slurm = parser.add_argument_group("Slurm (a table, sweep or ablation as a job array, through submitit)")
    slurm.add_argument("--slurm", action="store_true", help="submit the command as a Slurm job array whose tasks "
                       "share its runs out, print the job id and return (see docs/many-runs.md)")
    slurm.add_argument("--slurm-partition", metavar="NAME", help="the partition (default: the cluster's)")
    slurm.add_argument("--slurm-gpus", type=worker_count, metavar="G", help="GPUs per task (default none); with "
                       "several, the task starts one process per GPU, each training whole runs")
    slurm.add_argument("--slurm-cpus", type=worker_count, metavar="C", help="CPU cores per task (default 1)")
    slurm.add_argument("--slurm-time", type=worker_count, metavar="MINUTES", help="each task's time limit; a task "
                       "that reaches it is requeued and continues its run (default 60)")
    slurm.add_argument("--slurm-tasks", type=worker_count, metavar="N", help="tasks in the array (default: one "
                       "per run)")
    slurm.add_argument("--slurm-array-parallelism", type=worker_count, metavar="N", help="tasks running at once "
                       "(default 256)")
    slurm.add_argument("--slurm-executor", choices=("slurm", "local"), help="local: submitit's local executor, the "
                       "same tasks as processes on this machine (to try the array without a cluster)")
    return parser


def add_ladder_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ladder", metavar="FILE", help="the rows of the ladder file FILE (your own models, data and "
                        "ideas: see docs/extending.md) instead of the built-in ones; give it before or after the "
                        "command, e.g. main.py --ladder my.py list")


def lease_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"'{text}' is not a lease: give seconds from 1 to 86400")
    return value


def run(argv: list) -> int:
    """Train what the words ask for (`VERSIONS [options]` or `ablate V [options]`) and return the exit status:
    launched as several processes, or run in this one. A Slurm task runs this with its own words."""
    try:
        ablate = argv[0] == "ablate"
        parser = build_parser(ablate)
        args = parser.parse_args(argv[1:] if ablate else argv)
        checks.check_training_args(parser, args)
        processes = checks.process_count(parser, args)
        if args.dry_run:
            from runner import dry_run

            print("\n".join(dry_run.plan_lines(parser, args, processes)))
            return 0
        from runner import commands

        if processes > 1:
            from runner import distributed

            commands.check_devices(parser, args)
            return distributed.launch(processes, argv)
        return commands.guarded(lambda progress: commands.run_training(parser, args, progress, run))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
