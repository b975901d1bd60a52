"""--dry-run: what a training command would do, printed, and nothing done. After the checks that need no data
(checks.py), it plans: each run with its folder, what that folder holds (finished, partial, claimed, failed or
new), its epochs and an estimate of its time and arithmetic, then the total. No torch is imported and no image
decoded (an image folder's files are listed, to match the runs already there); nothing is written, launched,
submitted, claimed or waited for. What only the work itself would meet (the device, Slurm, a dataset to download,
a folder the command would refuse) is a line of the plan, not an error."""
import argparse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from configs import VERSIONS
from runner import checks
from runner import claims
from runner import placement
from runner import plan
from runner.errors import CheckpointError, DataError, RunnerError
from runner.records import CONFIG, RunFolder
from runner.settings import DATASETS, RunConfig
from runner.sources import DataSource, data_identity, dataset_files

TIMES = ("Times: the version's seconds per epoch measured on docs/results.md's 2-core CPU, times the epochs left "
         '("unknown": none measured); TFLOP: its whole run\'s (list) per epoch, times the epochs left')


def plan_lines(parser: argparse.ArgumentParser, args: argparse.Namespace, processes: int) -> list[str]:
    """The plan of a checked training command (VERSIONS or ablate V) to be run in `processes` processes."""
    lines = ["Dry run: nothing is trained, written, launched or submitted."]

    def autocast(by_default: bool) -> bool | None:
        """--amp or --no-amp as given; else off, or left to the device (None) for a version that autocasts where
        the device computes in bfloat16."""
        return args.amp if args.amp is not None else None if by_default else False

    try:
        runs = plan.runs(args, autocast, {"device": args.device or "auto"})
    except DataError as error:
        return lines + [f"Data: {error}; the command would stop there"]
    lines.append(f"Device: {args.device or 'auto'} (not looked up: that needs torch; the command checks it first)")
    undecided = sorted({run.version for run in runs if run.identity.amp is None})
    if undecided:
        lines.append(f"Autocast: version(s) {', '.join(map(str, undecided))} train in bfloat16 where the device "
                     "computes in it, which the run looks up (--amp or --no-amp says it here); runs of either kind "
                     "match")
    if processes > 1:
        lines.append(f"Processes: {processes} on this machine, through torchrun's launcher: none started")
        if not plan.writes_table(args):
            checks.check_batch_division(parser, {runs[0].recipe.batch_size}, processes)
    if args.slurm:
        lines.append(slurm_line(args, len(runs)))
    lines += [data_line(source) for source in dict.fromkeys(DataSource.of(run) for run in runs)]
    rows = table_rows(args, runs, lines) if plan.writes_table(args) else single_row(args, runs[0], lines)
    return lines + run_lines(rows) + [total_line(rows), TIMES]


def slurm_line(args: argparse.Namespace, runs: int) -> str:
    """What --slurm would submit, or why it could not (submitit missing, no Slurm on this machine)."""
    try:
        from runner import slurm

        slurm.check_cluster(args.slurm_executor)
    except ImportError as error:
        return f"Slurm: {error.name or 'submitit'} is not installed (pip install -r requirements.txt); the " \
               "command would stop there"
    except RunnerError as error:
        return f"Slurm: {str(error).removeprefix('--slurm: ')}; the command would stop there"
    where = "submitit's local executor, on this machine" if args.slurm_executor == "local" else "Slurm"
    return f"Slurm: a job array of {args.slurm_tasks or runs} task(s) on {where}: none submitted"


def data_line(source: DataSource) -> str:
    """Where a run's images come from and whether they are there, without reading an image."""
    title = DATASETS[source.dataset].title
    if source.image_folder:
        counts = data_identity(source)["image_folder"]
        split = f"{counts['train']:,} training" + (f" and {counts['test']:,} test" if "test" in counts else "")
        return f"Data: {title} from the image folder {source.image_folder}: {len(counts['classes'])} classes, " \
               f"{split} images (listed, none decoded)"
    files = dict.fromkeys(path for train in ((True,) if source.holdout else (True, False))
                          for path in dataset_files(source, train))
    missing = [path.name for path in files if not path.exists()]
    folder = next(iter(files)).parent
    if missing:
        return f"Data: {title} is not in {folder} ({len(missing)} file(s) missing, first {missing[0]}): the " \
               "command downloads it first"
    return f"Data: {title} in {folder}"


@dataclass
class Row:
    """One run of the plan: its folder's name, what the folder holds (kind: finished, partial, claimed, failed,
    new or refused; state: as a person reads it), its epochs and the epochs left to train."""

    name: str
    kind: str
    state: str
    epochs: int
    left: int
    version: int


def held(folder: RunFolder, epochs: int) -> tuple[str, str, int, dict | None]:
    """(kind, state, epochs recorded, claim) of a run folder, from its files alone (metrics.csv, failed.txt and its
    claim), as a run of `epochs` epochs."""
    done = folder.epochs_recorded()
    failure = folder.failure()
    if failure is not None:
        return "failed", f"failed ({failure or 'no reason recorded'})", done, None
    if done >= epochs:
        return "finished", "finished", done, None
    record = claims.read_claim(folder.path)
    state = f"partial at epoch {done}" if done else "new"
    if record is None:
        return ("partial" if done else "new"), state, done, None
    gone = ", its process gone: taken over at once" if claims.owner_gone(record) else ""
    owner = f"claimed by {claims.owner_text(record)}{gone}"
    return "claimed", f"{state}, {owner}" if done else owner, done, record


def table_rows(args: argparse.Namespace, runs: list, lines: list) -> list:
    """The rows of a table, sweep or ablation: each run in the folder place_runs would give it (placement's
    matching), with what it would do there. The results folder's line goes to `lines`."""
    results_dir = Path(args.out) if args.out else Path("runs") / f"table-{datetime.now():%Y%m%d-%H%M%S}"
    foreign = placement.foreign_entry(results_dir) if results_dir.is_dir() else None
    lines.append(f"Results folder: {results_dir}" + (
        " (new)" if not results_dir.exists() else
        f": holds {foreign}, which no run of this tool wrote; the command refuses it" if foreign else ""))
    rows = []
    for run, folder in zip(runs, placement.match_folders(results_dir, runs, args.seeds is not None)):
        rows.append(table_row(args, run, folder))
    return rows


def table_row(args: argparse.Namespace, run: RunConfig, folder: RunFolder) -> Row:
    epochs = run.recipe.epochs
    kind, state, done, _ = held(folder, epochs)
    row = Row(folder.path.name, kind, state, epochs, epochs - done, run.version)
    if args.force and (folder / CONFIG).exists() and (kind != "new" or done):
        row.state += "; --force waits for its owner, then starts it over" if kind == "claimed" else \
            "; --force starts it over"
        row.left = epochs
        return row
    if (folder / CONFIG).exists():
        try:
            changes = placement.run_differences(folder.read_config(), run)
        except CheckpointError as error:
            return Row(row.name, "refused", f"{error}; the command stops there", epochs, 0, run.version)
        if changes:
            name, theirs, ours = changes[0]
            return Row(row.name, "refused", f"holds another run ({name}={theirs!r}, this command asks {ours!r}): "
                       "the command refuses it (--force starts it over)", epochs, 0, run.version)
    if kind == "failed":
        row.state += "; --retry-failed trains it again" if args.retry_failed else "; skipped"
        row.left = epochs - done if args.retry_failed else 0
    elif kind == "finished":
        row.left = 0
    return row


def single_row(args: argparse.Namespace, run: RunConfig, lines: list) -> list:
    """The one row of a single run, in --out or a new folder under runs/, with what train_one would do there. The
    run folder's line goes to `lines`."""
    epochs = run.recipe.epochs
    if not args.out:
        path = Path("runs") / f"{placement.arm_label(run)}-{datetime.now():%Y%m%d-%H%M%S}"
        lines.append(f"Run folder: {path} (new; named when the run starts)")
        return [Row(path.name, "new", "new", epochs, epochs, run.version)]
    folder = RunFolder(Path(args.out))
    lines.append(f"Run folder: {folder.path}")
    name = folder.path.name
    if folder.path.exists() and not folder.is_unstarted() and not folder.is_ours():
        return [Row(name, "refused", "not empty and not a run folder: the command refuses it", epochs, 0,
                    run.version)]
    kind, state, done, record = held(folder, epochs)
    if folder.has_checkpoint() and not args.force:
        return [Row(name, "refused", f"{state}: the command refuses it (continue it with --resume {folder.path}, or "
                    "add --force to start over)", epochs, 0, run.version)]
    if folder.has_checkpoint():
        state += "; --force starts it over"
    elif kind in ("finished", "partial", "failed"):  # records without a checkpoint: cleared for the new run
        state += "; started over (no checkpoint in it)"
    if record is not None and not claims.owner_gone(record):
        state += "; the command refuses it while its owner trains it" if claims.owner_alive(record) else \
            "; the command waits for its heartbeat to stand still for a lease, then takes it over"
    return [Row(name, kind, state, epochs, epochs, run.version)]


def estimate(row: Row) -> str:
    seconds = VERSIONS[row.version].epoch_seconds
    if not row.left:
        return "0 s"
    time = "unknown" if seconds is None else f"~{max(1, round(seconds * row.left)):,} s"
    arithmetic = tflop_left(row)
    return time if arithmetic is None else f"{time}, ~{arithmetic:,.3g} TFLOP"


def tflop_left(row: Row) -> float | None:
    """The arithmetic of the epochs left: the version's whole run's share per epoch (its final test spread over
    them), or None where the ladder gives no figure."""
    version = VERSIONS[row.version]
    return None if version.tflop is None else version.tflop / version.recipe.epochs * row.left


def run_lines(rows: list) -> list:
    """One aligned line per run: folder, what it holds, epochs, estimated time."""
    cells = [(row.name, row.state, f"{row.epochs} epochs" + (f" ({row.left} left)" if 0 < row.left < row.epochs
                                                               else ""), estimate(row)) for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(3)]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[3]
            for line in cells]


def total_line(rows: list) -> str:
    kinds = [kind for kind in ("finished", "partial", "claimed", "failed", "new", "refused")
             if any(row.kind == kind for row in rows)]
    counts = ", ".join(f"{sum(row.kind == kind for row in rows)} {kind}" for kind in kinds)
    known = [VERSIONS[row.version].epoch_seconds * row.left for row in rows
             if row.left and VERSIONS[row.version].epoch_seconds is not None]
    unknown = sum(1 for row in rows if row.left and VERSIONS[row.version].epoch_seconds is None)
    seconds = round(sum(known))
    work = f"~{seconds:,} s of training{duration(seconds)}" if known else "nothing to train"
    arithmetic = [tflop for tflop in map(tflop_left, rows) if tflop]
    if arithmetic:
        work += f", ~{sum(arithmetic):,.3g} TFLOP"
    refused = "; as it stands the command refuses to start" if any(row.kind == "refused" for row in rows) else ""
    return f"Total: {len(rows)} run(s) ({counts}); {work}" + (
        f", and {unknown} run(s) of unknown time" if unknown else "") + refused


def duration(seconds: int) -> str:
    if seconds < 120:
        return ""
    return f" (about {seconds / 60:.0f} min)" if seconds < 7200 else f" (about {seconds / 3600:.1f} h)"
