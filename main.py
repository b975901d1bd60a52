"""Command line of the runner: parsing (the training command's in runner/train_command.py), then checks.py checks
what needs no data, then commands.py does the work.

`list`, `--help`, usage errors and `--dry-run` import no torch, so they answer at once.
"""
import argparse
import sys
import textwrap
from dataclasses import MISSING
from pathlib import Path

from runner import checks
from runner import train_command
from runner import overrides
from configs import VERSIONS
from ladder import SOURCE, LadderError, parent_row, use_built_in
from runner.settings import DATASETS, TTA_KINDS, Recipe, device_name


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
    train_command.add_ladder_option(parser)
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
        parser.add_argument("--tta", choices=TTA_KINDS, help="test-time augmentation for "
                            "this test (default: the run's recipe's): what each part of it buys, on a trained model; "
                            "confusion.png and mistakes.png are drawn again from it, their titles naming it")
    parser.add_argument("--device", type=one_device, default="auto", metavar="D",
                        help="auto (default), cpu, cuda, cuda:K or mps")
    return parser


def one_device(text: str) -> str:
    if "," in text:
        raise argparse.ArgumentTypeError(f"'{text}': give one device")
    return device_name(text)


def describe_model(recipe: Recipe) -> str:
    args = recipe.model_args
    text = recipe.model + (f"({args['width']})" if "width" in args else "")
    if args.get("batch_norm"):
        text += "+BN"
    if args.get("dropout"):
        text += f"+Dropout({args['dropout']})"
    if recipe.whitening:
        text = "Whitening+" + text
    if recipe.batch_transform != "none":
        text += f"+{recipe.batch_transform}"
    return text


def describe_optimizer(recipe: Recipe) -> str:
    text = ("Adam" if recipe.optimizer == "adam" else "Nesterov" if recipe.nesterov else "SGD") + f" {recipe.lr:g}"
    return f"Muon {recipe.muon_lr:g}+{text}" if recipe.optimizer == "muon" else text


LIST_WIDTH = 120  # every line `list` prints fits a terminal this wide
REMARK_INDENT = "    "


def version_table() -> str:
    """The ladder, a version to a line, each row's remark wrapped on the lines under it; then what the reference
    accuracies are, and each row's ideas over its parent."""
    header = ("v", "dataset", "model", "optimizer", "batch", "epochs", "params", "TFLOP", "train", "test")
    rows = []
    for row in VERSIONS.values():
        recipe, reference = row.recipe, row.reference
        accuracy = [f"{value:.{2 if row.reference_source == 'seed' else 4}f}" for value in reference] \
            if reference else ["-", "-"]
        rows.append((str(row.number), DATASETS[row.dataset].title, describe_model(recipe), describe_optimizer(recipe),
                     str(recipe.batch_size), str(recipe.epochs), f"{row.params:,}" if row.params else "-",
                     "-" if row.tflop is None else f"{row.tflop:,.3g}", *accuracy))
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def aligned(cells: tuple) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    lines = [aligned(header)]
    for cells, row in zip(rows, VERSIONS.values()):
        lines.append(aligned(cells))
        lines += textwrap.wrap(row.remark, LIST_WIDTH, initial_indent=REMARK_INDENT, subsequent_indent=REMARK_INDENT)
    lines += ["", *textwrap.wrap(table_footer(), LIST_WIDTH), "",
              "Each row's ideas over its parent (main.py ablate V takes them out one at a time):"]
    for row in VERSIONS.values():
        if row.parent is None:
            continue
        change = "" if parent_row(row).dataset == row.dataset else f"on {DATASETS[row.dataset].title}; "
        named = "; ".join(f"{idea} ({' '.join(overrides.arm_words(settings))})" for idea, settings in row.ideas.items())
        start = f"  {row.number:>2} = "
        lines += textwrap.wrap(f"{start}{row.parent} + {change}{named or 'no new idea'}", LIST_WIDTH,
                               subsequent_indent=" " * len(start))
    return "\n".join(lines)


def table_footer() -> str:
    """Where the reference accuracies come from, and which rows autocast by default."""
    seed_rows = [n for n, row in VERSIONS.items() if row.reference_source == "seed" and row.reference]
    ours = [n for n, row in VERSIONS.items() if row.reference_source != "seed" and row.reference]
    parts = []
    if seed_rows:
        parts.append(f"the seed's published ones for {min(seed_rows)}-{max(seed_rows)}")
    if ours:
        parts.append(f"for {', '.join(map(str, ours))} our own full runs on the CIFAR-10 JPEG copy (see README.md)")
    if len(ours) + len(seed_rows) < len(VERSIONS):
        parts.append("- : none given")
    footer = f"train, test: the reference accuracies, {'; '.join(parts)}."
    autocast = ", ".join(str(n) for n, row in VERSIONS.items() if row.autocast)
    if autocast:
        footer += f" {autocast} train in bfloat16 autocast by default where the device computes in it (--no-amp: fp32)."
    if SOURCE:
        footer += f" Rows of the ladder file {SOURCE['file']}."
    return footer


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
    for chosen, (arguments, kinds) in overrides.CHOSEN.items():
        for name, kind in kinds.items():
            for argument, (_, _, default) in kind.arguments.items():
                setting = overrides.argument_settings(chosen, name)[overrides.prefix_of(chosen) + argument]
                versions = [n for n, row in VERSIONS.items() if getattr(row.recipe, chosen) == name
                            and argument in getattr(row.recipe, arguments)]
                rows.append(field_row(setting, f"{'required' if default is None else overrides.written(default)} "
                                               f"({name})", versions))
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


def build_status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py status", allow_abbrev=False, description="What the copies of a "
                                     "table, sweep or ablation command have done in its results folder: each run "
                                     "finished, running (on which machine and process), failed (why) or waiting.")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="the results folder (--out) of the command")
    return parser


def show_status(argv: list) -> int:
    """status: torch is never imported on this path."""
    from runner.errors import RunnerError
    from runner.status import status_lines

    args = build_status_parser().parse_args(argv)
    try:
        print("\n".join(status_lines(Path(args.results_dir))))
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def take_ladder(argv: list) -> tuple[list, str | None]:
    """The words without `--ladder FILE` (given anywhere), and FILE: it is run before anything else is parsed,
    since its rows are what VERSIONS names."""
    words, files = [], []
    iterator = iter(argv)
    for word in iterator:
        if word == "--ladder":
            files.append(next(iterator, None))
        elif word.startswith("--ladder="):
            files.append(word.partition("=")[2])
        else:
            words.append(word)
    if not files:
        return words, None
    if len(files) > 1 or not files[0]:
        train_command.build_parser().error("give --ladder FILE once, with the ladder file's path")
    return words, files[0]


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv, ladder_file = take_ladder(argv)
        use_built_in()  # unless the file's rows replace it below
        if ladder_file:
            from runner import ladder_files

            try:
                ladder_files.load(ladder_file)
            except LadderError as error:
                print(f"error: {error}", file=sys.stderr)
                return error.exit_code
            if argv and argv[0] not in ("list", "fields", "status"):  # every process it starts carries it on
                argv += ["--ladder", SOURCE["file"]]
        if not argv:
            train_command.build_parser().print_usage()
            print(f"\n{version_table()}\n\nRun one with: python main.py VERSION (e.g. python main.py 9); "
                  "python main.py --help for every option.")
            return 0
        if argv[0] in ("list", "fields"):
            if len(argv) > 1:
                train_command.build_parser().error(f"{argv[0]} takes no arguments (got "
                                                   f"{' '.join(argv[1:])})")
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
        return train_command.run(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
