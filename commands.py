"""The commands behind the command line: train one version or a table of versions and seeds, resume a run, test
or use a saved run. Every failure a user can meet ends as one line on stderr and its exit status (cli.md)."""
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from configs import VERSIONS
from console import STOP, Stopped
from errors import RunnerError
from main import check_image_folder, check_readable_dir, default_cache_dir
from records import CHECKPOINT, CONFIG, RunFolder
from settings import Recipe, RunConfig, RunIdentity, Runtime, given


class Progress:
    """What a command has started so far: the folder it writes and the command that continues it."""

    label = "Run folder"
    folder = None
    resume_command = None
    created = None


def command_line(*words) -> str:
    """A command a user can paste: every word shell-quoted."""
    return shlex.join(["python", "main.py", *map(str, words)])


def device_or_error(parser, name: str, amp: bool):
    """The device, or a usage error (exit 2) when it is missing or cannot run --amp."""
    from devices import check_amp, resolve_device

    try:
        device = resolve_device(name)
        if amp:
            check_amp(device)
        return device
    except ValueError as error:
        parser.error(str(error))


def run_config(version: int, args, seed: int, device) -> RunConfig:
    """A version's run as the command line asks for it."""
    from data import DataSource, data_identity

    row, values = VERSIONS[version], vars(args)
    changes, identity = given(Recipe, values), dict(given(RunIdentity, values), seed=seed)
    folder = args.image_folder if version in args.folder_versions else None
    runtime = Runtime(**{**given(Runtime, values), "device": str(device),
                         "data_dir": os.path.abspath(args.data_dir or "data"),
                         "cache_dir": os.path.abspath(args.cache_dir or default_cache_dir()),
                         "image_folder": folder and os.path.abspath(folder)})
    source = DataSource(row.dataset, runtime.data_dir, runtime.image_folder, runtime.cache_dir,
                        identity.get("resize", False))
    return RunConfig(version, row.dataset, replace(row.recipe, **changes),
                     RunIdentity(**identity, data=data_identity(source)), runtime,
                     {**changes, **given(RunIdentity, values)})


def run_training(parser, args, argv: list, progress: Progress) -> None:
    import results
    import train

    if args.resume:
        resume(parser, args, progress)
        return
    device = device_or_error(parser, args.device or "auto", bool(args.amp))
    seeds = args.seeds or [args.seed or 0]
    runs = [run_config(version, args, seed, device) for version in args.versions for seed in seeds]
    if len(runs) == 1:
        folder = RunFolder(Path(args.out)) if args.out else RunFolder.new(Path("runs"), f"v{args.versions[0]}")
        progress.created = None if args.out else folder.path
        folder.claim(args.force)
        progress.folder, progress.resume_command = folder.path, command_line("--resume", folder.path)
        train.fit(runs[0], folder)
        return
    results_dir = Path(args.out) if args.out else RunFolder.new(Path("runs"), "table").path
    progress.created = None if args.out else results_dir
    results.claim_results_folder(results_dir)
    again = [word for word in argv if word != "--force"] + ([] if args.out else ["--out", results_dir])
    progress.label, progress.folder, progress.resume_command = "Results folder", results_dir, command_line(*again)
    planned = [(run, RunFolder(results_dir / results.run_name(run.version, run.identity.seed, len(seeds) > 1)))
               for run in runs]
    results.run_table(planned, results_dir, args.force, lambda run, folder, resume: train.fit(run, folder, resume))


def resume(parser, args, progress: Progress) -> None:
    """Continue a run folder: only runtime settings may change, and --epochs may grow unless a schedule spans the
    run's steps."""
    import train
    from data import DataSource, data_identity

    folder = RunFolder(Path(args.resume))
    run = folder.read_config()
    changes = given(Runtime, vars(args))
    device = device_or_error(parser, changes.get("device", run.runtime.device), run.identity.amp)
    for name in ("data_dir", "image_folder", "cache_dir"):
        if name in changes:
            changes[name] = os.path.abspath(changes[name])
    runtime = replace(run.runtime, **changes, device=str(device))
    if {"data_dir", "image_folder"} & changes.keys():
        source = DataSource(run.dataset, runtime.data_dir, runtime.image_folder, runtime.cache_dir, run.identity.resize)
        if data_identity(source) != run.identity.data:
            raise RunnerError(f"{source.name} is not the data {folder.path} was trained on (other classes or sample "
                              "counts): give the run's own data")
    epochs = args.epochs or run.recipe.epochs
    if epochs != run.recipe.epochs and run.fixed_length:
        raise RunnerError(f"version {run.version}'s learning rate follows a schedule over the run's "
                          f"{run.recipe.epochs} epochs, so it cannot change to {epochs}: start a new run with "
                          f"--epochs {epochs}")
    run = replace(run, recipe=replace(run.recipe, epochs=epochs), runtime=runtime)
    progress.folder, progress.resume_command = folder.path, command_line("--resume", folder.path)
    train.fit(run, folder, resume=True)


def run_saved(parser, args, command: str) -> None:
    """eval or predict a finished run."""
    check_readable_dir(parser, "RUN_DIR", args.run_dir)
    for name in (CONFIG, CHECKPOINT):
        if not os.path.isfile(os.path.join(args.run_dir, name)):
            parser.error(f"RUN_DIR {args.run_dir}: not a finished run folder (no {name} in it)")
    if command == "predict":
        for image in args.images:
            if not os.path.isfile(image) or not os.access(image, os.R_OK):
                parser.error(f"IMAGE {image}: no such readable file")
    elif args.image_folder:
        check_image_folder(parser, args.image_folder)
    device = device_or_error(parser, args.device, False)
    import saved
    from data import DataSource

    folder = RunFolder(Path(args.run_dir))
    if command == "predict":
        for image, best in zip(args.images, saved.predict(folder, args.images, device)):
            print(f"{image}: " + ", ".join(f"{name} {probability:.4f}" for name, probability in best))
        return
    run = folder.read_config()
    source = DataSource(run.dataset, args.data_dir or run.runtime.data_dir,
                        args.image_folder or run.runtime.image_folder, args.cache_dir or run.runtime.cache_dir,
                        run.identity.resize)
    report = saved.evaluate_run(folder, device, source, args.quiet)
    print(f"Test Loss: {report['loss']:.4f} | Test Acc: {report['accuracy']:.4f}"
          + (f" (test-time augmentation: {report['tta']})" if report["tta"] else ""))
    width = max(len(name) for name in report["per_class"])
    for name, accuracy in report["per_class"].items():
        print(f"  {name.ljust(width)}  {accuracy:.4f}")
    print(f"Confusion matrix: {folder / 'confusion.png'}")


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def guarded(work) -> int:
    """Run the work with the stop flag set up, turning every failure a user can meet into one line and its exit
    status; a folder this command made and left empty is removed."""
    import torch

    progress = Progress()
    STOP.install()
    try:
        work(progress)
    except (Stopped, KeyboardInterrupt) as stop:
        code = stop.exit_code if isinstance(stop, Stopped) else 130
        if progress.label == "Run folder" and not (progress.folder and (progress.folder / CHECKPOINT).exists()):
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
        STOP.uninstall()
        if progress.created and progress.created.is_dir() and not any(progress.created.iterdir()):
            progress.created.rmdir()
    if progress.folder:
        print(f"{progress.label}: {progress.folder}")
    return 0
