"""The checks of a command line that need no data and no torch, in the order a user would fix them: each failure
is argparse's usage error (exit 2) naming the bad value."""
import argparse
import collections
import json
import os
from pathlib import Path

from runner import ablations
from runner import holdout
from runner import ladder_files
from runner import overrides
from configs import VERSIONS
from ladder import LadderError
from runner.settings import DATASETS, SETTINGS, Recipe, flag_fields, given, resumable_names, shared_gpu, was_given


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


def check_image_folder(parser: argparse.ArgumentParser, path: str, holdout: bool = False) -> None:
    """A folder with train/ and test/ (train/ alone under --holdout, which never reads the test split)."""
    check_readable_dir(parser, "--image-folder", path)
    for split in ("train",) if holdout else ("train", "test"):
        if not os.path.isdir(os.path.join(path, split)):
            needs = "train/<class>/*" if holdout else "train/<class>/* and test/<class>/*"
            parser.error(f"--image-folder {path}: has no {split}/ folder (it needs {needs})")


def check_holdout(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--holdout N must leave every class of every version's training split something to train on."""
    from runner.errors import DataError
    from runner.folders import list_image_folder, split_folder

    if not args.holdout:
        if args.holdout_seed is not None:
            parser.error("--holdout-seed chooses the images --holdout takes: give --holdout N too")
        return
    for version in args.versions:
        if version in args.folder_versions:
            try:
                classes, samples = list_image_folder(split_folder(args.image_folder, True))
            except DataError as error:
                parser.error(f"--image-folder {args.image_folder}: {error}")
            counts = collections.Counter(label for _, label in samples)
            sizes = [counts[index] for index in range(len(classes))]
        else:
            classes, sizes = None, DATASETS[VERSIONS[version].dataset].class_sizes
        try:
            holdout.shares(sizes, args.holdout, classes)
        except holdout.HoldoutError as error:
            parser.error(f"version {version}: {error}")


def first_image_size(parser: argparse.ArgumentParser, folder: str) -> tuple[int, int]:
    """The size of the first training image, as the run will list the folder."""
    from PIL import Image, UnidentifiedImageError

    from runner.errors import DataError
    from runner.folders import list_image_folder, split_folder

    try:
        first = list_image_folder(split_folder(folder, True))[1][0][0]
    except DataError:
        parser.error(f"--image-folder {folder}: train/ holds no images in class folders")
    try:
        with Image.open(first) as image:
            return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
        parser.error(f"--image-folder {folder}: {first} is not an image")


def versions_on_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set:
    """The versions an image folder stands in for: the one version asked for; among several, those whose size
    its images have, or all of them with --resize (so `all --image-folder cifar10-jpeg` trains 6-13 on it and 1-5
    on their own datasets)."""
    folder, versions = args.image_folder, args.versions
    if len(versions) == 1 or args.resize:
        return set(versions)
    width, height = first_image_size(parser, folder)
    matching = {n for n in versions if DATASETS[VERSIONS[n].dataset].size == width == height}
    if not matching:
        sizes = ", ".join(sorted({f"{DATASETS[VERSIONS[n].dataset].size}x{DATASETS[VERSIONS[n].dataset].size}"
                                  for n in versions}))
        parser.error(f"--image-folder {folder}: its images are {width}x{height}, and none of the versions chosen "
                     f"takes that size ({sizes}); add --resize to resize them")
    return matching


def saved_holdout(run_dir: str) -> bool:
    """Whether a run folder's run holds images out (its config.json, read without torch; False if unreadable,
    which --resume then reports)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return bool(json.load(f).get("holdout"))
    except (OSError, ValueError, AttributeError):
        return False


def check_training_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything that can be checked without torch, in the order a user would fix it."""
    values = vars(args)
    parser.out = args.out or args.resume
    if args.resume:
        if args.versions or args.ablated:
            parser.error("give either VERSIONS or --resume RUN_DIR, not both")
        if args.dry_run:
            parser.error("--dry-run plans the runs of VERSIONS or ablate V, not --resume (the run folder's "
                         "metrics.csv says how far its run is)")
        check_readable_dir(parser, "--resume", args.resume)
        if not os.path.isfile(os.path.join(args.resume, "config.json")):
            parser.error(f"--resume {args.resume}: not a run folder (no config.json in it)")
        allowed = resumable_names() | {"resume", "procs", "lease", "ladder"}  # the ladder: checked against the run's
        negatable = {f.name for kind in SETTINGS for f in flag_fields(kind) if f.metadata["negatable"]}
        changed = [name for name, value in values.items()
                   if (was_given(value) or (name in negatable and value is False)) and name not in allowed]
        if changed:
            flags = sorted(setting.metadata["flag"] for kind in SETTINGS for setting in flag_fields(kind)
                           if setting.name in allowed)
            parser.error(f"--{changed[0].replace('_', '-')} cannot change when resuming (only "
                         f"{', '.join(flags)} can)")
        if args.image_folder:
            check_image_folder(parser, args.image_folder, holdout=saved_holdout(args.resume))
        check_slurm(parser, args)
        return
    if not (args.versions or args.ablated):
        parser.error("say which versions to run, e.g. 9 or 1,3,6-9 (see: python main.py list)")
    if args.seed is not None and args.seeds:
        parser.error("give --seed or --seeds, not both")
    if args.resize and not args.image_folder:
        parser.error("--resize resizes the images of an --image-folder: give one")
    if args.ablate:
        args.ablation, args.arms = checked_ablation(parser, args)
        args.versions = sorted({arm.version for arm in args.ablation})
    else:
        args.arms = checked_arms(parser, args)
    args.folder_versions = set()
    if args.image_folder:
        check_image_folder(parser, args.image_folder, holdout=bool(args.holdout))
        args.folder_versions = versions_on_folder(parser, args)
    check_holdout(parser, args)
    check_slurm(parser, args)
    check_creatable_dir(parser, "--data-dir", args.data_dir or "data", writable=False)
    check_creatable_dir(parser, "--out" if args.out else "runs", args.out or "runs", writable=True)


def check_slurm(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--slurm submits a table (several runs into one results folder); its options need it."""
    options = [name for name, value in vars(args).items() if name.startswith("slurm_") and value is not None]
    if options and not args.slurm:
        parser.error(f"--{options[0].replace('_', '-')} sets a Slurm job array: add --slurm")
    if not args.slurm:
        return
    if args.resume or "RANK" in os.environ:
        parser.error("--slurm submits a table, sweep or ablation from a login node: not with --resume, nor under "
                     "torchrun (a Slurm task with several GPUs starts its processes itself: --slurm-gpus)")
    if len(args.versions) == 1 and len(args.arms) == 1 and args.seeds is None and not args.ablate:
        parser.error("--slurm submits several runs into one results folder: give several versions, --seeds, a --set "
                     "sweep, or ablate")
    autocast = [version for version in args.versions if VERSIONS[version].autocast]
    if autocast and args.amp is None:  # the submitting command places the runs, and cannot see the tasks' devices
        parser.error(f"--slurm: version {autocast[0]} trains in bfloat16 autocast where the device computes in it, "
                     "and only the tasks' machines know theirs: give --amp or --no-amp")


def parsed_assignments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The --set assignments, parsed by their types, none of them also set by its shorthand flag."""
    try:
        assignments = overrides.parse_assignments(args.set or [])
    except overrides.SetError as error:
        parser.error(str(error))
    shorthands = [name for name in assignments if was_given(vars(args).get(name))]
    if shorthands:
        flag = "--" + shorthands[0].replace("_", "-")
        parser.error(f"{flag} and --set {shorthands[0]}=... both set {shorthands[0]}: give one of them")
    return assignments


def check_arm(parser: argparse.ArgumentParser, base: Recipe, dataset: str, settings: dict, args: argparse.Namespace,
              where: str) -> None:
    """A recipe with the recipe flags and an arm's --set settings must be able to run (a usage error otherwise); a
    ladder file's model and any batch transform are tried on a dummy batch (which imports torch)."""
    try:
        recipe = overrides.arm_recipe(base, given(Recipe, vars(args)), settings)
        overrides.check_recipe(recipe, dataset, args.loader == "torchvision")
        if ladder_files.needs_check(recipe):
            ladder_files.check_row(recipe, dataset, where)
    except (overrides.SetError, LadderError) as error:
        parser.error(f"{where}: {error}" if isinstance(error, overrides.SetError) else str(error))


def checked_arms(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list:
    """The arms of the --set settings ([{}] without any), each checked on every version asked for: a name, value
    or combination that cannot run is a usage error before any data is read."""
    arms = overrides.grid(parsed_assignments(parser, args))
    for version in args.versions:
        for arm in arms:
            words = " ".join(overrides.arm_words(arm))
            check_arm(parser, VERSIONS[version].recipe, VERSIONS[version].dataset, arm, args,
                      f"version {version}{' with ' + words if words else ''}")
    return arms


def checked_ablation(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list, list]:
    """The arms of `ablate V` (ablations.Arm), each checked with the --set settings given, which must hold one
    value each and leave alone the fields V's ideas move; and those settings as the one arm of the --set grid."""
    version = args.ablated[0]
    assignments = parsed_assignments(parser, args)
    for name in given(Recipe, vars(args)):
        idea = ablations.moving_idea(version, name)
        if idea:
            parser.error(f"--{name.replace('_', '-')}: ablate {version} moves {name} itself (idea: {idea}): leave "
                         "it out")
    for name, values in assignments.items():
        if len(values) > 1:
            parser.error(f"--set {name}: ablate takes one value per field (its arms are the ideas); sweep it with "
                         "main.py VERSIONS --set instead")
        idea = ablations.moving_idea(version, name)
        if idea:
            parser.error(f"--set {name}: ablate {version} moves {name} itself (idea: {idea}): leave it "
                         "out")
    arms, settings = ablations.plan(version, args.add), overrides.grid(assignments)
    for arm in arms:
        check_arm(parser, arm.recipe, VERSIONS[arm.version].dataset, settings[0], args,
                  f"ablate {version}, arm v{arm.version} {arm.idea or '(its own recipe)'}")
    return arms, settings


def check_saved_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> None:
    check_readable_dir(parser, "RUN_DIR", args.run_dir)
    for name in ("config.json", "checkpoint.pt"):
        if not os.path.isfile(os.path.join(args.run_dir, name)):
            parser.error(f"RUN_DIR {args.run_dir}: not a finished run folder (no {name} in it)")
    if command == "predict" and args.onnx:
        from runner.deployed import stale_export

        why = stale_export(Path(args.run_dir))
        if why:
            parser.error(why)
    if command == "predict":
        for image in args.images:
            if not os.path.isfile(image) or not os.access(image, os.R_OK):
                parser.error(f"IMAGE {image}: no such readable file")
    elif args.image_folder:
        check_image_folder(parser, args.image_folder)
    if command == "export" and args.onnx_out:
        check_onnx_out(parser, args.onnx_out)


def check_onnx_out(parser: argparse.ArgumentParser, path: str) -> None:
    """--onnx-out: a new file in a writable folder, or an ONNX file this tool wrote (which is replaced)."""
    target = Path(path)
    if target.is_dir():
        parser.error(f"--onnx-out {path}: is a folder; give a file name, e.g. {target / 'model.onnx'}")
    check_creatable_dir(parser, "--onnx-out's folder", str(target.parent), writable=True)
    if target.exists():
        from runner.deployed import is_ours

        if not is_ours(target):
            parser.error(f"--onnx-out {path}: exists and was not written by this tool; give a new file name "
                         "(nothing was changed)")


def process_count(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """How many processes to launch on this machine: --procs N or one per device of a list (none under torchrun,
    which launched this one)."""
    devices = (args.device or "").split(",")
    if len(devices) > 1 and args.procs not in (None, len(devices)):
        parser.error(f"--procs {args.procs} does not match the {len(devices)} devices of --device {args.device}")
    if len(devices) == 1 and (args.procs or 1) > 1 and devices[0].startswith("cuda:"):
        parser.error(shared_gpu(args.device, args.procs))
    if "RANK" in os.environ or args.slurm:
        return 1  # under torchrun, or each Slurm task starts its own
    return max(args.procs or 1, len(devices))


def check_batch_division(parser: argparse.ArgumentParser, batch_sizes: set, processes: int) -> None:
    """One run trained by several processes splits each batch evenly between them."""
    uneven = sorted(size for size in batch_sizes if size % processes)
    if uneven:
        parser.error(f"--batch-size {uneven[0]} does not divide among {processes} processes: give a multiple of "
                     f"{processes}")
