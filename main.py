"""Command line of the runner: every argument is checked before any data is loaded, then train.py does the work."""
import argparse
import math
import os
import re
import signal
import sys
from pathlib import Path

from configs import DATASETS, VERSIONS

RESUME_OPTIONS = {"epochs", "device", "threads", "quiet", "eval_every"}
EXAMPLES = """commands:
  main.py VERSIONS [options]           train and test: 9 | 1,3 | 6-9 | 1,3,6-9 | all
  main.py list                         the version table
  main.py --resume RUN_DIR [--epochs N] continue a run (a larger N extends a finished one)
  main.py eval RUN_DIR                 test a saved run: per-class accuracy and confusion.png
  main.py predict RUN_DIR IMAGE...     top-3 classes for each image

examples:
  python main.py 9
  python main.py 1 --epochs 2 --data-dir ../shared/data
  python main.py 6-9 --image-folder ../shared/data/cifar10-jpeg
"""


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "basic-image-classification")


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


def whole_number(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low} or more" if high is None else f"between {low} and {high}"
        raise argparse.ArgumentTypeError(f"'{text}' must be {bounds}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def seed_number(text: str) -> int:
    return whole_number(text, 0, 2 ** 63 - 1)


def seed_list(text: str) -> list[int]:
    seeds = [seed_number(part.strip()) for part in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"'{text}' repeats a seed")
    return seeds


def learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be a finite number above 0")
    return value


def device_name(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a device: use auto, cpu, cuda, cuda:K or mps")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py", usage="%(prog)s [VERSIONS | list | eval RUN_DIR | predict RUN_DIR IMAGE...] [options]",
        description="Train and test the nine versions of the image-classification ablation ladder.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="?", type=version_list, metavar="VERSIONS",
                        help="versions to run: 9, 1,3, 6-9, 1,3,6-9 or all")
    recipe = parser.add_argument_group("recipe overrides (default: the version's own recipe)")
    recipe.add_argument("--epochs", type=positive_int, metavar="N", help="epochs to train (recipe: 25)")
    recipe.add_argument("--batch-size", type=positive_int, metavar="N", help="batch size (recipe: 64)")
    recipe.add_argument("--lr", type=learning_rate, metavar="X", help="learning rate (recipe: 0.01 SGD, 0.001 Adam)")
    recipe.add_argument("--seed", type=seed_number, metavar="N", help="seed for torch, numpy and python (default 0)")
    recipe.add_argument("--seeds", type=seed_list, metavar="S,S,...",
                        help="train each version once per seed and report mean ± std")
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", metavar="DIR", help="where datasets are found or downloaded (default ./data)")
    data.add_argument("--image-folder", metavar="DIR",
                      help="use DIR/train/<class>/* and DIR/test/<class>/* instead of the version's dataset")
    data.add_argument("--cache-dir", metavar="DIR", help=f"decoded image folders (default {default_cache_dir()})")
    data.add_argument("--loader", choices=("resident", "torchvision"),
                      help="resident: whole dataset on the device (default); torchvision: the classic DataLoader")
    run = parser.add_argument_group("running")
    run.add_argument("--device", type=device_name, metavar="D", help="auto (default), cpu, cuda, cuda:K or mps")
    run.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for torch")
    run.add_argument("--amp", action="store_true", default=None, help="bfloat16 autocast (changes numerics)")
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    run.add_argument("--deterministic", action="store_true", default=None,
                     help="torch's deterministic algorithms (CUDA: slower, repeatable)")
    run.add_argument("--eval-every", type=positive_int, metavar="K", help="test every K epochs (default 1; the last "
                                                                          "epoch is always tested)")
    record = parser.add_argument_group("records")
    record.add_argument("--out", metavar="DIR", help="run folder (one version) or results folder (several)")
    record.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    record.add_argument("--force", action="store_true", help="start over in folders that hold runs already")
    record.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def build_saved_run_parser(command: str) -> argparse.ArgumentParser:
    if command == "eval":
        parser = argparse.ArgumentParser(prog="main.py eval", description="Test a saved run: loss, accuracy, "
                                         "per-class accuracy, and confusion.png in the run folder.")
    else:
        parser = argparse.ArgumentParser(prog="main.py predict", description="Top-3 classes with probabilities "
                                         "for each image, converted and resized to the model's input.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with config.json and checkpoint.pt")
    if command == "predict":
        parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    else:
        parser.add_argument("--data-dir", metavar="DIR", help="dataset folder (default: the run's)")
        parser.add_argument("--image-folder", metavar="DIR", help="image folder (default: the run's)")
        parser.add_argument("--cache-dir", metavar="DIR", help="decoded image folders (default: the run's)")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", type=device_name, default="auto", metavar="D",
                        help="auto (default), cpu, cuda, cuda:K or mps")
    return parser


def describe_model(row) -> str:
    text = row.model + (f"(w={row.model_args['width']})" if "width" in row.model_args else "")
    if row.model_args.get("batch_norm"):
        text += "+BN"
    if row.model_args.get("dropout"):
        text += f"+Dropout({row.model_args['dropout']})"
    return text


def version_table() -> str:
    header = ("v", "dataset", "model", "optimizer", "params", "train", "test", "remark")
    rows = [(str(row.number), DATASETS[row.dataset].title, describe_model(row),
             f"{'SGD' if row.optimizer == 'sgd' else 'Adam'} {row.lr:g}", f"{row.params:,}",
             f"{row.seed_train_acc:.2f}", f"{row.seed_test_acc:.2f}", row.remark) for row in VERSIONS.values()]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
             for line in [header, *rows]]
    return "\n".join(lines) + "\n(train/test: the seed's published accuracies after 25 epochs)"


def check_readable_dir(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    if not os.path.isdir(path):
        parser.error(f"{option} {path}: no such folder")
    if not os.access(path, os.R_OK | os.X_OK):
        parser.error(f"{option} {path}: the folder is not readable")


def check_creatable_dir(parser: argparse.ArgumentParser, option: str, path: str, writable: bool) -> None:
    """The folder exists (writable if asked) or can be made: its nearest existing parent is a writable folder."""
    target = Path(path).absolute()
    if target.exists():
        if not target.is_dir():
            parser.error(f"{option} {path}: exists and is not a folder")
        if not os.access(target, os.R_OK | os.X_OK):
            parser.error(f"{option} {path}: the folder is not readable")
        if writable and not os.access(target, os.W_OK | os.X_OK):
            parser.error(f"{option} {path}: the folder is not writable")
        return
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"{option} {path}: cannot be created ({parent} is not a writable folder)")


def check_image_folder(parser: argparse.ArgumentParser, path: str) -> None:
    check_readable_dir(parser, "--image-folder", path)
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(path, split)):
            parser.error(f"--image-folder {path}: has no {split}/ folder (it needs train/<class>/* and "
                         "test/<class>/*)")


def versions_on_folder(parser: argparse.ArgumentParser, folder: str, versions: list) -> set:
    """The versions an image folder stands in for: the one version asked for, or, among several, those whose
    images have the folder's size (so `all --image-folder cifar10-jpeg` trains 6-9 on it and 1-5 on their own)."""
    if len(versions) == 1:
        return set(versions)
    from PIL import Image, UnidentifiedImageError

    first = next((os.path.join(root, name) for root, _, names in sorted(os.walk(os.path.join(folder, "train")))
                  for name in sorted(names)), None)
    if first is None:
        parser.error(f"--image-folder {folder}: train/ holds no images")
    try:
        with Image.open(first) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        parser.error(f"--image-folder {folder}: {first} is not an image")
    matching = {n for n in versions if DATASETS[VERSIONS[n].dataset].size == width == height}
    if not matching:
        parser.error(f"--image-folder {folder}: its images are {width}x{height}, and none of the versions chosen "
                     "takes that size (1-5: 28x28, 6-9: 32x32)")
    return matching


def check_training_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything that can be checked without torch, in the order a user would fix it."""
    if args.resume:
        if args.versions:
            parser.error("give either VERSIONS or --resume RUN_DIR, not both")
        check_readable_dir(parser, "--resume", args.resume)
        if not os.path.isfile(os.path.join(args.resume, "config.json")):
            parser.error(f"--resume {args.resume}: not a run folder (no config.json in it)")
        changed = [name for name, value in vars(args).items()
                   if value not in (None, False) and name not in RESUME_OPTIONS | {"resume"}]
        if changed:
            parser.error(f"--{changed[0].replace('_', '-')} cannot change when resuming (only --epochs, --device, "
                         "--threads, --eval-every and --quiet can)")
        return
    if not args.versions:
        parser.error("say which versions to run, e.g. 9 or 1,3,6-9 (see: python main.py list)")
    if args.seed is not None and args.seeds:
        parser.error("give --seed or --seeds, not both")
    args.folder_versions = set()
    if args.image_folder:
        check_image_folder(parser, args.image_folder)
        args.folder_versions = versions_on_folder(parser, args.image_folder, args.versions)
    check_creatable_dir(parser, "--data-dir", args.data_dir or "data", writable=False)
    if args.out:
        check_creatable_dir(parser, "--out", args.out, writable=True)
    else:
        check_creatable_dir(parser, "runs", "runs", writable=True)


def device_or_error(parser: argparse.ArgumentParser, name: str):
    import train
    try:
        return train.resolve_device(name)
    except ValueError as error:
        parser.error(str(error))


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised where the program stands so that the same clean stop as Ctrl-C follows."""


def raise_stopped(signum, frame):
    raise Stopped()


class Progress:
    """What a training command has started so far: the folder it writes and the command that continues it."""

    label = "Run folder"
    folder = None
    resume_command = None


def run_training(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list, progress: Progress) -> None:
    import results
    import train
    from errors import RunnerError

    if args.resume:
        run_dir = Path(args.resume)
        cfg = train.read_config(run_dir)
        cfg.device = str(device_or_error(parser, args.device or cfg.device))
        cfg.epochs = args.epochs or cfg.epochs
        cfg.threads = args.threads or cfg.threads
        cfg.eval_every = args.eval_every or cfg.eval_every
        progress.folder, progress.resume_command = run_dir, f"python main.py --resume {run_dir}"
        train.fit(cfg, run_dir, resume=True, quiet=args.quiet)
        return
    device = device_or_error(parser, args.device or "auto")
    settings = {name: value for name, value in vars(args).items()
                if value is not None and name in train.RunConfig.__dataclass_fields__}
    settings.update(device=str(device), cache_dir=os.path.abspath(args.cache_dir or default_cache_dir()),
                    data_dir=os.path.abspath(args.data_dir or "data"))
    settings.pop("image_folder", None)
    plan = {version: dict(settings, image_folder=os.path.abspath(args.image_folder)
                          if version in args.folder_versions else None) for version in args.versions}
    settings.pop("seed", None)
    seeds = args.seeds or [args.seed]
    if len(args.versions) == 1 and len(seeds) == 1:
        run_dir = Path(args.out) if args.out else train.new_run_dir(Path("runs"), f"v{args.versions[0]}")
        if (run_dir / train.CONFIG).exists():
            if not args.force:
                raise RunnerError(f"{run_dir} holds a run already: continue it with --resume {run_dir}, "
                                  "or add --force to start over")
            results.clear_run(run_dir)
        cfg = train.RunConfig.for_version(args.versions[0], **plan[args.versions[0]], seed=seeds[0])
        progress.folder, progress.resume_command = run_dir, f"python main.py --resume {run_dir}"
        train.fit(cfg, run_dir, quiet=args.quiet)
        return
    results_dir = Path(args.out) if args.out else train.new_run_dir(Path("runs"), "table")
    again = [word for word in argv if word != "--force"] + ([] if args.out else ["--out", str(results_dir)])
    progress.label, progress.folder = "Results folder", results_dir
    progress.resume_command = "python main.py " + " ".join(again)
    results.run_table(plan, seeds, results_dir, force=args.force, quiet=args.quiet)


def run_saved(command: str, argv: list) -> None:
    parser = build_saved_run_parser(command)
    args = parser.parse_args(argv)
    check_readable_dir(parser, "RUN_DIR", args.run_dir)
    for name in ("config.json", "checkpoint.pt"):
        if not os.path.isfile(os.path.join(args.run_dir, name)):
            parser.error(f"RUN_DIR {args.run_dir}: not a finished run folder (no {name} in it)")
    if command == "predict":
        for image in args.images:
            if not os.path.isfile(image) or not os.access(image, os.R_OK):
                parser.error(f"IMAGE {image}: no such readable file")
    elif args.image_folder:
        check_image_folder(parser, args.image_folder)
    device = device_or_error(parser, args.device)
    import train

    if command == "predict":
        for image, best in zip(args.images, train.predict(Path(args.run_dir), args.images, device)):
            print(f"{image}: " + ", ".join(f"{name} {probability:.4f}" for name, probability in best))
        return
    cfg = train.read_config(Path(args.run_dir))
    source = train.DataSource(cfg.dataset, args.data_dir or cfg.data_dir, args.image_folder or cfg.image_folder,
                              args.cache_dir or cfg.cache_dir)
    report = train.evaluate_run(Path(args.run_dir), device, source, args.quiet)
    print(f"Test Loss: {report['loss']:.4f} | Test Acc: {report['accuracy']:.4f}")
    width = max(len(name) for name in report["per_class"])
    for name, accuracy in report["per_class"].items():
        print(f"  {name.ljust(width)}  {accuracy:.4f}")
    print(f"Confusion matrix: {Path(args.run_dir) / 'confusion.png'}")


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv:
            build_parser().print_usage()
            print(f"\n{version_table()}\n\nRun one with: python main.py VERSION (e.g. python main.py 9); "
                  "python main.py --help for every option.")
            return 0
        if argv[0] == "list":
            if len(argv) > 1:
                build_parser().error(f"list takes no arguments (got {' '.join(argv[1:])})")
            print(version_table())
            return 0
        if argv[0] in ("eval", "predict"):
            return guarded(lambda progress: run_saved(argv[0], argv[1:]))
        parser = build_parser()
        args = parser.parse_args(argv)
        check_training_args(parser, args)
        return guarded(lambda progress: run_training(parser, args, argv, progress))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


def guarded(work) -> int:
    """Run the work, turning every failure a user can meet into one line and its exit status (cli.md)."""
    import torch

    from errors import RunnerError

    progress = Progress()
    previous = signal.signal(signal.SIGTERM, raise_stopped)
    try:
        work(progress)
    except KeyboardInterrupt as stop:
        code = 143 if isinstance(stop, Stopped) else 130
        if progress.label == "Run folder" and not (progress.folder and (progress.folder / "checkpoint.pt").exists()):
            return fail("interrupted before the first epoch finished; nothing to resume: start the run again", code)
        return fail(f"interrupted; every finished epoch is kept. Continue with: {progress.resume_command}", code)
    except RunnerError as error:
        return fail(str(error), error.exit_code)
    except torch.OutOfMemoryError:
        return fail("out of memory on the device: try a smaller --batch-size, or --device cpu", 1)
    except OSError as error:
        return fail(f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}; free space or "
                    "choose another --out / --data-dir", 1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if progress.folder:
        print(f"{progress.label}: {progress.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
