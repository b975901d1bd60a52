"""Command line of the runner: parsing, then checks.py checks what needs no data, then commands.py does the work.

`list`, `--help` and usage errors import no torch, so they answer at once.
"""
import argparse
import os
import re
import sys
from dataclasses import MISSING
from pathlib import Path

from runner import ablations
from runner import checks
from runner import overrides
from configs import VERSIONS
from runner.settings import (DATASETS, MODEL_KINDS, SETTINGS, Recipe, RunIdentity, Runtime, device_name, flag_fields,
                      seed_number, worker_count)

GROUP_TITLES = {
    Recipe: "recipe (default: the version's own; see: main.py list)",
    RunIdentity: "fixed for a run (a results folder or --resume refuses a change)",
    Runtime: "runtime (may change on --resume)",
}
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
"""


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
            "into one results folder, and each is compared with V (with --add, with the parent)."),
            formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        parser.add_argument("ablated", type=one_version, metavar="V", help="the version whose ideas to test (3-5, "
                            "7-13: those whose parent trains on the same dataset)")
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
                               help="processes on this machine, as torchrun --nproc_per_node N (see README)")
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
                       "share its runs out, print the job id and return (see README)")
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


def build_saved_run_parser(command: str) -> argparse.ArgumentParser:
    if command == "eval":
        parser = argparse.ArgumentParser(prog="main.py eval", allow_abbrev=False, description="Test a saved run: "
                                         "loss, accuracy, per-class accuracy, and confusion.png in the run folder.")
    elif command == "export":
        parser = argparse.ArgumentParser(prog="main.py export", allow_abbrev=False, description=(
            "Write a run's model as ONNX (model.onnx in the run folder): uint8 pixels in, class log-probabilities "
            "out, scaling and input layers inside, float32, any batch size; checked in ONNX Runtime against "
            "PyTorch on the run's test images."))
    else:
        parser = argparse.ArgumentParser(prog="main.py predict", allow_abbrev=False, description="Top-3 classes "
                                         "with probabilities for each image, converted and resized to the model's "
                                         "input.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with config.json and checkpoint.pt")
    if command == "predict":
        parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
        parser.add_argument("--onnx", action="store_true", help="with the run's exported model.onnx in ONNX Runtime, "
                            "on the CPU, without PyTorch (see: main.py export)")
    else:
        parser.add_argument("--data-dir", metavar="DIR", help="dataset folder (default: the run's)")
        parser.add_argument("--image-folder", metavar="DIR", help="image folder (default: the run's)")
        parser.add_argument("--cache-dir", metavar="DIR", help="decoded datasets (default: the run's)")
    if command == "export":
        parser.add_argument("--onnx-out", metavar="FILE", help="write the model here instead (an existing file "
                            "only if this tool wrote it)")
        parser.add_argument("--tta", action="store_true", help="build the recipe's test-time augmentation into "
                            "the graph, so that it answers at the run's reported accuracy")
        return parser
    if command == "eval":
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", type=one_device, default="auto", metavar="D",
                        help="auto (default), cpu, cuda, cuda:K or mps")
    return parser


def lease_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"'{text}' is not a lease: give seconds from 1 to 86400")
    return value


def one_device(text: str) -> str:
    if "," in text:
        raise argparse.ArgumentTypeError(f"'{text}': give one device")
    return device_name(text)


def describe_model(recipe: Recipe) -> str:
    args = recipe.model_args
    text = recipe.model + (f"(w={args['width']})" if "width" in args else "")
    if args.get("batch_norm"):
        text += "+BN"
    if args.get("dropout"):
        text += f"+Dropout({args['dropout']})"
    if recipe.whitening:
        text = "Whitening+" + text
    return text


def describe_optimizer(recipe: Recipe) -> str:
    text = ("Adam" if recipe.optimizer == "adam" else "SGD" + ("-Nesterov" if recipe.nesterov else "")) + \
        f" {recipe.lr:g}"
    return f"Muon {recipe.muon_lr:g} + {text}" if recipe.optimizer == "muon" else text


def version_table() -> str:
    header = ("v", "dataset", "model", "optimizer", "batch", "epochs", "params", "ref train", "ref test", "remark")
    rows = []
    for row in VERSIONS.values():
        recipe, reference = row.recipe, row.reference
        accuracy = [f"{value:.{2 if row.reference_source == 'seed' else 4}f}" for value in reference] \
            if reference else ["-", "-"]
        rows.append((str(row.number), DATASETS[row.dataset].title, describe_model(recipe), describe_optimizer(recipe),
                     str(recipe.batch_size), str(recipe.epochs), f"{row.params:,}", *accuracy, row.remark))
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
             for line in [header, *rows]]
    seed_rows = [n for n, row in VERSIONS.items() if row.reference_source == "seed" and row.reference]
    ours = [n for n, row in VERSIONS.items() if row.reference_source != "seed" and row.reference]
    footer = f"(ref train/test: the seed's published accuracies for {min(seed_rows)}-{max(seed_rows)}"
    if ours:
        footer += f"; for {', '.join(map(str, ours))} our own full runs on the CIFAR-10 JPEG copy (see README.md)"
    if len(ours) + len(seed_rows) < len(VERSIONS):
        footer += "; - : not measured yet"
    autocast = [str(n) for n, row in VERSIONS.items() if row.autocast]
    footer += (f".\n {', '.join(autocast)} train in bfloat16 autocast by default where the device computes in it "
               "(--no-amp: fp32)")
    ideas = ["", "Each row's ideas over its parent (main.py ablate V takes them out one at a time):"]
    for row in VERSIONS.values():
        if row.parent is None:
            continue
        change = "" if VERSIONS[row.parent].dataset == row.dataset else f"on {DATASETS[row.dataset].title}; "
        named = "; ".join(f"{idea} ({' '.join(overrides.arm_words(settings))})" for idea, settings in row.ideas.items())
        ideas.append(f"  {row.number:>2} = {row.parent} + {change}{named or 'no new idea'}")
    return "\n".join(lines) + "\n" + footer + ")\n" + "\n".join(ideas)


def fields_table() -> str:
    """Every name --set takes, with its type, default, the values it may take, and the versions that set it; a model
    argument once per family that takes it."""
    header = ("name", "type", "default", "values", "set by versions")
    rows = []
    for name, setting in overrides.recipe_settings().items():
        default = Recipe.__dataclass_fields__[name].default
        default = "-" if default is MISSING else overrides.written(default)
        versions = [n for n, row in VERSIONS.items() if overrides.written(getattr(row.recipe, name)) != default]
        rows.append(field_row(setting, default, versions))
    for model, kind in MODEL_KINDS.items():
        for argument, (_, _, default) in kind.arguments.items():
            setting = overrides.model_settings(model)[overrides.MODEL_PREFIX + argument]
            versions = [n for n, row in VERSIONS.items() if row.recipe.model == model
                        and argument in row.recipe.model_args]
            rows.append(field_row(setting, f"{'required' if default is None else overrides.written(default)} "
                                           f"({model})", versions))
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *rows])


def field_row(setting, default: str, versions: list) -> tuple:
    values = " | ".join(setting.choices) if setting.choices else "true | false" if setting.kind is bool else \
        str(setting.range or "")
    kind = "list of int (AxBxC)" if setting.kind is list else setting.kind.__name__
    return setting.name, kind, default, values, ",".join(map(str, versions)) or "-"


def predict_onnx(args: argparse.Namespace) -> int:
    """predict --onnx: ONNX Runtime alone; torch is never imported on this path."""
    from runner import deployed
    from runner.errors import RunnerError

    try:
        answers = deployed.predict(Path(args.run_dir), args.images)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    for image, best in zip(args.images, answers):
        print(deployed.answer_line(image, best))
    return 0


def show_status(argv: list) -> int:
    """status: torch is never imported on this path."""
    from runner.errors import RunnerError
    from runner.status import status_lines

    parser = argparse.ArgumentParser(prog="main.py status", allow_abbrev=False, description="What the copies of a "
                                     "table, sweep or ablation command have done in its results folder: each run "
                                     "finished, running (on which machine and process), failed (why) or waiting.")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="the results folder (--out) of the command")
    args = parser.parse_args(argv)
    try:
        print("\n".join(status_lines(Path(args.results_dir))))
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv:
            build_parser().print_usage()
            print(f"\n{version_table()}\n\nRun one with: python main.py VERSION (e.g. python main.py 9); "
                  "python main.py --help for every option.")
            return 0
        if argv[0] in ("list", "fields"):
            if len(argv) > 1:
                build_parser().error(f"{argv[0]} takes no arguments (got {' '.join(argv[1:])})")
            print(version_table() if argv[0] == "list" else fields_table())
            return 0
        if argv[0] == "status":
            return show_status(argv[1:])
        if argv[0] in ("eval", "predict", "export"):
            parser = build_saved_run_parser(argv[0])
            args = parser.parse_args(argv[1:])
            checks.check_saved_run_args(parser, args, argv[0])
            if argv[0] == "predict" and args.onnx:
                return predict_onnx(args)
            from runner import commands

            return commands.guarded(lambda progress: commands.run_saved(parser, args, argv[0]))
        ablate = argv[0] == "ablate"
        parser = build_parser(ablate)
        args = parser.parse_args(argv[1:] if ablate else argv)
        checks.check_training_args(parser, args)
        processes = checks.process_count(parser, args)
        from runner import commands

        if processes > 1:
            from runner import distributed

            commands.check_devices(parser, args)
            return distributed.launch(processes, argv)

        return commands.guarded(lambda progress: commands.run_training(parser, args, progress))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
