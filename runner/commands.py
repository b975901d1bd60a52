"""The commands behind the command line: train one version or a table of versions and seeds, resume a run, test
or use a saved run. Every failure a user can meet ends as one line on stderr and its exit status."""
import os
import shlex
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from runner import checks
from runner import claims
from runner import distributed
from runner import overrides
from runner import placement
from runner import plan
from runner.cli_words import command_words
from runner.console import EXIT_CODES, STOP, Stopped
from runner.errors import OthersTraining, RunnerError
from ladder import SOURCE
from runner.records import CHECKPOINT, SLURM_LOGS, RunFolder, check_ladder, leave_failure_marker
from runner.settings import RunConfig, Runtime, flag_fields, given


TRACEBACK = "BASIC_IMAGE_CLASSIFICATION_TRACEBACK"  # set it to see an unexpected failure's traceback


class Progress:
    """What a command has started so far: the folder it writes and the command that continues it."""

    label = "Run folder"
    folder = None
    resume_command = None
    created = None
    marker = None


def command_line(*words) -> str:
    """A command a user can paste: every word shell-quoted; under torchrun, its launcher is to be given again."""
    if distributed.launched_by_torchrun():
        return "torchrun [the same options] " + shlex.join(["main.py", *map(str, words)])
    return shlex.join(["python", "main.py", *map(str, words)])


def procs_words(args) -> list:
    """The words that launched this command's processes, for the command that continues it."""
    if args.procs:
        return ["--procs", args.procs]
    return ["--device", args.device] if args.device and "," in args.device else []


def device_or_error(parser, name: str, amp: bool):
    """This process's device, or a usage error (exit 2) when it is missing or cannot run --amp."""
    from runner.devices import check_amp, resolve_device

    try:
        device = resolve_device(distributed.process_device(name))
        if amp:
            check_amp(device)
        return device
    except ValueError as error:
        parser.error(str(error))


def check_devices(parser, args) -> None:
    """Every device of a --device list, checked here before processes are started on them."""
    for name in (args.device or "auto").split(","):
        device_or_error(parser, name, bool(args.amp))


def planned_runs(args, device, group) -> list:
    """Every run the command asks for (plan.runs), in this process's numerics on its device and in its place among
    the processes."""
    from runner.devices import resolve_amp

    threads = distributed.process_threads(args.threads) if distributed.launched() else args.threads
    return plan.runs(args, lambda by_default: resolve_amp(args.amp, by_default, device),
                     {"device": str(device), "threads": threads, "rank": distributed.rank(), "world_size": group.size})


def join_processes(parser, args, device, data_parallel: bool, batch_sizes: set, sync_bn: bool):
    """Under torchrun: check what only several processes can check, join them, and return the Group a run
    trains across (all of them for one run; each process alone for a table's runs)."""
    marker = distributed.failure_marker(args.out or args.resume)
    if marker and distributed.restart_count() and marker.exists():
        raise RunnerError(marker.read_text().strip(), shared=True)
    if sync_bn and not (distributed.launched() and device.type == "cuda" and data_parallel):
        parser.error(f"--sync-bn{' (this run was started with it)' if args.resume else ''} needs one version trained "
                     "by several processes on CUDA (torchrun); PyTorch's SyncBatchNorm has no CPU version")
    if not distributed.launched():
        return distributed.SOLO
    if distributed.restarts_allowed() and not (args.out or args.resume):
        parser.error("torchrun --max-restarts: give --out, so that restarted processes continue the same folder")
    if data_parallel:
        checks.check_batch_division(parser, batch_sizes, distributed.environment("WORLD_SIZE"))
    distributed.start(device)
    if marker and not distributed.restart_count() and distributed.is_writer():
        marker.unlink(missing_ok=True)
    check_one_ladder()
    return distributed.Group(data_parallel=data_parallel)


def check_one_ladder() -> None:
    """Every process runs the same ladder: the same file, unchanged between their starts (or none)."""
    hashes = distributed.everyone("the ladder file", SOURCE.get("sha256"))
    if len(set(hashes)) > 1:
        raise RunnerError(f"the processes read different ladder files ({', '.join(str(h)[:12] for h in hashes)}: "
                          "it changed while they started, or they were given different ones): start them again "
                          "with one unchanged file", shared=True)


def run_training(parser, args, progress: Progress, command: Callable[[list], int]) -> None:
    """Train one version or a table, or submit a table as a Slurm job array whose tasks each run `command` (the
    training command as a function of its words, train_command.run) on their words."""
    from runner import results
    from runner.devices import NO_COMPILER, can_compile
    import train

    if args.resume:
        resume(parser, args, progress)
        return
    device = device_or_error(parser, args.device or "auto", bool(args.amp))
    if args.compile and not args.slurm and not can_compile(device):  # a Slurm task checks its own machine
        args.compile = None
        if distributed.is_writer():
            print(NO_COMPILER, file=sys.stderr)
    if args.slurm:
        from runner import slurm

        slurm.check_cluster(args.slurm_executor)
    several = plan.writes_table(args)
    batch_sizes = {arm.get("batch_size") or args.batch_size or recipe.batch_size for _, recipe, _ in
                   plan.arm_bases(args) for arm in args.arms}
    group = join_processes(parser, args, device, not several, batch_sizes, bool(args.sync_bn))
    progress.marker = distributed.failure_marker(args.out)
    runs = planned_runs(args, device, group)
    if not several:
        train_one(runs[0], args, group, progress)
        return
    results_dir = Path(args.out or distributed.on_first(
        "choosing the results folder", lambda: str(RunFolder.new(Path("runs"), "table").path)))
    progress.created = None if args.out else results_dir
    distributed.on_first("checking the results folder", lambda: results.prepare_results_folder(results_dir))
    lease = args.lease or claims.DEFAULT_LEASE
    if args.slurm:  # --force and --retry-failed are the submitting command's: done once, before any task starts
        results.place_runs(results_dir, runs, args.seeds is not None, args.force, lease, args.retry_failed)
        jobs = slurm.submit(parser, args, results_dir, len(runs), command)
        print(f"Submitted {len(jobs)} array task(s) (job {', '.join(dict.fromkeys(job.split('_')[0] for job in jobs))})"
              f", each taking runs of {results_dir} until none is left; their logs: {results_dir / SLURM_LOGS}.\n"
              f"See them with: {command_line('status', results_dir)}")
        return
    progress.label, progress.folder = "Results folder", results_dir
    progress.resume_command = command_line(*command_words(parser, args, without={"force"}, out=results_dir))
    paths = distributed.on_first("placing the runs", lambda: results.place_runs(
        results_dir, runs, args.seeds is not None, args.force, lease, args.retry_failed))
    planned = [(run, RunFolder(Path(path))) for run, path in zip(runs, paths)]
    baseline = runs[0] if args.ablate else None
    elsewhere = results.run_table(results_dir, planned, lambda run, folder, resume: train.fit(run, folder, resume),
                                  lambda: results.publish(results_dir, planned, baseline), args.fail_fast, lease)
    elsewhere = [claim for claims_left in distributed.everyone("waiting for the table's other runs", elsewhere)
                 for claim in claims_left if claims.read_claim(claim[0]) is not None]
    if not distributed.is_writer():
        return
    if elsewhere:
        results.publish(results_dir, planned, baseline)
        raise OthersTraining(f"{len(elsewhere)} run(s) are still trained by other copies of this command (first: "
                             f"{elsewhere[0][0]}, by {claims.owner_text(elsewhere[0][1])}); the copy that ends last "
                             f"prints the table. See them with: {command_line('status', results_dir)}")
    chosen = (lambda row: whole_split_command(parser, args, row)) if args.holdout and len(args.arms) > 1 else None
    results.report(results_dir, planned, chosen, baseline)


def whole_split_command(parser, args, row: dict) -> str:
    """The command that trains a table's row (a version with its --set settings) as this one did, without
    --holdout: on the whole training split, tested on the test split, into a new folder."""
    words = command_words(parser, args, without={"holdout", "holdout_seed", "out", "force", "retry_failed"},
                          versions=[row["version"]], set=overrides.arm_words(row["settings"]) or None)
    return command_line(*words)


def train_one(run: RunConfig, args, group, progress: Progress) -> None:
    """One run, in one process or across all of them. Restarted by torchrun, it continues its folder."""
    from runner import results
    import train

    name = placement.arm_label(run)
    path = Path(args.out or distributed.on_first(
        "choosing the run folder", lambda: str(RunFolder.new(Path("runs"), name).path)))
    folder = RunFolder(path, writer=group.rank == 0)
    progress.created = None if args.out else folder.path
    progress.folder = folder.path
    progress.resume_command = command_line("--resume", folder.path, *procs_words(args))
    restarted = distributed.restart_count() > 0 and distributed.on_first("looking for the run's checkpoint",
                                                                          folder.has_checkpoint)
    if restarted:
        distributed.on_first("checking the run folder", lambda: results.check_same_run(folder, run))
    else:
        distributed.on_first("checking the run folder", lambda: folder.check_free(args.force))
    with claimed(folder, args):
        if not restarted:
            distributed.on_first("preparing the run folder", lambda: folder.prepare(args.force))
        train.fit(run, folder, restarted, group)


@contextmanager
def claimed(folder: RunFolder, args):
    """The run folder claimed by the writing process for as long as the run trains (results.claim_run), with its
    checkpoints guarded by the claim, as a table's copies claim theirs; a live owner refuses every process."""
    from runner import results

    held = []
    distributed.on_first("claiming the run", lambda: held.append(results.claim_run(
        folder.path, args.lease or claims.DEFAULT_LEASE)))
    folder.guard = held[0].check if held else None
    try:
        yield
    finally:
        folder.guard = None
        for claim in held:
            claim.release()


def resume(parser, args, progress: Progress) -> None:
    """Continue a run folder: only runtime settings may change, and --epochs may grow unless a schedule spans the
    run's steps. --quiet is as given now; paths, threads and --eval-every as before unless
    given."""
    folder = RunFolder(Path(args.resume))
    run = folder.read_config()
    check_ladder(run, folder.path)
    changes = given(Runtime, vars(args))
    stored = run.runtime.device
    if distributed.launched() and stored.startswith("cuda"):
        stored = "cuda"  # each process takes the GPU of its LOCAL_RANK again
    device = device_or_error(parser, changes.get("device", stored), run.identity.amp)
    group = join_processes(parser, args, device, True, {run.recipe.batch_size}, run.identity.sync_bn)
    progress.marker = distributed.failure_marker(args.resume)
    folder.writer = group.rank == 0
    try:
        with claimed(folder, args):
            continue_run(run, folder, changes, device, group, args, progress)
    except RunnerError as error:
        error.shared = group.data_parallel
        raise


def continue_run(run: RunConfig, folder: RunFolder, changes: dict, device, group, args, progress: Progress) -> None:
    """Every process of a resumed run meets the same failures here."""
    import train
    from runner.sources import DataSource, data_identity

    for name in ("data_dir", "image_folder", "cache_dir"):
        if name in changes:
            changes[name] = os.path.abspath(changes[name])
    if distributed.launched():
        changes["threads"] = distributed.process_threads(args.threads)
    switches = {f.name: False for f in flag_fields(Runtime) if f.metadata["parse"] is None}
    runtime = replace(run.runtime, **{**switches, **changes, "device": str(device), "rank": distributed.rank(),
                                      "world_size": group.size})
    if {"data_dir", "image_folder"} & changes.keys():
        source = DataSource.of(replace(run, runtime=runtime))
        if data_identity(source) != run.identity.data:
            raise RunnerError(f"{source.name} is not the data {folder.path} was trained on (other classes or sample "
                              "counts): give the run's own data")
    epochs = args.epochs or run.recipe.epochs
    if epochs != run.recipe.epochs and run.fixed_length:
        raise RunnerError(f"version {run.version}'s learning rate follows a schedule over the run's "
                          f"{run.recipe.epochs} epochs, so it cannot change to {epochs}: start a new run with "
                          f"--epochs {epochs}")
    run = replace(run, recipe=replace(run.recipe, epochs=epochs), runtime=runtime)
    progress.folder = folder.path
    progress.resume_command = command_line("--resume", folder.path, *procs_words(args))
    train.fit(run, folder, True, group)


def run_saved(parser, args, command: str) -> None:
    """eval or predict a finished run (main.py has checked the arguments), in the run's numerics."""
    folder = RunFolder(Path(args.run_dir))
    run = folder.read_config()
    check_ladder(run, folder.path)
    from runner import saved
    from runner.sources import DataSource

    if command == "export":
        export_model(folder, run, args)
        return
    device = device_or_error(parser, args.device, run.identity.amp)

    if command == "predict":
        from runner.deployed import answer_line

        for image, best in zip(args.images, saved.predict(folder, run, args.images, device)):
            print(answer_line(image, best))
        return
    source = DataSource(run.dataset, args.data_dir or run.runtime.data_dir,
                        args.image_folder or run.runtime.image_folder, args.cache_dir or run.runtime.cache_dir,
                        run.identity.resize)
    report = saved.evaluate_run(folder, run, device, source, args.quiet, args.tta or run.recipe.tta)
    print(f"Test Loss: {report['loss']:.4f} | Test Acc: {report['accuracy']:.4f}"
          + (f" (test-time augmentation: {report['tta']})" if report["tta"] else ""))
    width = max(len(name) for name in report["per_class"])
    for name, accuracy in report["per_class"].items():
        print(f"  {name.ljust(width)}  {accuracy:.4f}")
    print(f"Confusion matrix: {folder / 'confusion.png'}")
    print(f"Mistakes: {report['wrong']} of {report['total']} test images; the {report['shown']} most confident: "
          f"{folder / 'mistakes.png'}")


def export_model(folder: RunFolder, run: RunConfig, args) -> None:
    """export: the run's model as ONNX, checked in ONNX Runtime, and what the check found."""
    from runner import export
    from runner.sources import DataSource

    out = Path(args.onnx_out) if args.onnx_out else folder.path / export.MODEL_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    source = replace(DataSource.of(run), data_dir=args.data_dir or run.runtime.data_dir,
                     image_folder=args.image_folder or run.runtime.image_folder,
                     cache_dir=args.cache_dir or run.runtime.cache_dir)
    check = export.export_run(folder, run, out, args.tta, source)
    print(f"Checked in ONNX Runtime on {check['images']}: largest difference of probabilities "
          f"{check['difference']:.2e}, top-1 agreement {check['agreement']:.4f}")
    print(f"ONNX model (opset {export.OPSET}, uint8 pixels in, log-probabilities out"
          + (f", test-time augmentation inside: {run.recipe.tta})" if args.tta and run.recipe.tta != "none" else ")")
          + f": {out}")


def fail(message: str, code: int, shared: bool = False, marker: Path | None = None) -> int:
    """One line on stderr; a failure every process shares is told by the first alone. With a marker (left by every
    process that meets the failure, whichever torchrun stops first), restarted processes will find the failure and
    end at once instead of repeating it."""
    if marker:
        leave_failure_marker(marker.parent, message)
    if not shared or distributed.is_writer():
        print(f"error: {message}", file=sys.stderr)
    return code


def stopped(progress: Progress, code: int) -> int:
    if progress.resume_command is None:  # eval, predict, or a command stopped before it began its work
        return fail("interrupted", code, shared=True)
    if progress.label == "Run folder" and not (progress.folder and (progress.folder / CHECKPOINT).exists()):
        return fail("interrupted before the first epoch finished; nothing to resume: start the run again", code,
                    shared=True)
    return fail(f"interrupted; every finished epoch is kept. Continue with: {progress.resume_command}", code,
                shared=True)


def guarded(work) -> int:
    """Run the work with the stop flag set up, turning every failure a user can meet into one line and its exit
    status; a folder this command made and left empty is removed."""
    import torch

    progress = Progress()
    STOP.install(second_stops_at_once=not distributed.launched())
    try:
        work(progress)
    except (Stopped, KeyboardInterrupt) as stop:
        return stopped(progress, stop.exit_code if isinstance(stop, Stopped) else 130)
    except distributed.PeerLost:
        return 1  # the process that failed has said why
    except OthersTraining as note:
        print(note, file=sys.stderr)
        return note.exit_code
    except RunnerError as error:
        return fail(str(error), error.exit_code, error.shared, progress.marker if error.permanent else None)
    except torch.OutOfMemoryError:
        return fail("out of memory on the device: try a smaller --batch-size, or --device cpu", 1)
    except OSError as error:
        return fail(f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}; free space or "
                    "choose another --out / --data-dir", 1)
    except Exception as error:  # noqa: BLE001 - the last resort: one line, never a traceback
        if STOP.signum is not None:
            return stopped(progress, EXIT_CODES[STOP.signum])  # e.g. DataLoader workers ended by the same Ctrl-C
        why = distributed.lost_peers(error)
        if why is not None:
            return fail(why, 1) if why else 1
        if os.environ.get(TRACEBACK):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return fail(f"unexpected {type(error).__name__}: {first} (set {TRACEBACK}=1 to see where; please report it "
                    "with the command that led to it)", 1)
    finally:
        STOP.uninstall()
        if distributed.is_writer() and progress.created and progress.created.is_dir() and \
                not any(progress.created.iterdir()):
            progress.created.rmdir()
        distributed.finish()
    if progress.folder:
        distributed.say(f"{progress.label}: {progress.folder}")
    return 0
