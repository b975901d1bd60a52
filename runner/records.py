"""The run folder and its one writer: config.json, metrics.csv, checkpoint.pt and the pictures.

Every file is written whole (files.py), so a crash, a full disk or two writers at once never leave half a file. A
folder this tool made says so in its config.json; --force clears only such folders, and a folder holding anything
else is never written to. Only the writing process (rank 0 of several) touches the disk; the others hold a
RunFolder that writes nothing.
"""
import json
import pickle
import shutil
import sys
from dataclasses import asdict
from datetime import datetime
from importlib import metadata
from pathlib import Path

from runner.errors import CheckpointError, RunnerError
from runner.files import atomic_write, write_text
from runner.settings import TOOL, Recipe, RunConfig, RunIdentity, Runtime, from_record

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.csv", "checkpoint.pt"
CURVES, CONFUSION, MISTAKES = "curves.png", "confusion.png", "mistakes.png"
FAILED = "failed.txt"  # why a run failed for good (a divergence): a sweep goes on with its other runs
MODEL = "model.onnx"  # main.py export's
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, CURVES, CONFUSION, MISTAKES, FAILED, MODEL)
EVENT_FILES, HPARAMS_RUN = "events.out.tfevents.", "hparams"  # TensorBoard's, written by events.py
FAILURE_MARKER = ".failed"  # a failure no restart can fix, for processes torchrun restarts (distributed.py)
CLAIM = ".claim"  # who trains the run now (claims.py); its temporary and stale copies are .claim.*
SLURM_LOGS = ".slurm"  # in a results folder: submitit's files and each Slurm task's output (slurm.py)
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "val_loss", "val_acc",
                  "test_seconds"]
CONFIG_FORMAT = 2
CHECKPOINT_KEYS = {"version", "epoch", "model", "shuffle_rng", "metrics", "classes"}  # and optimizer(s)
FORMAT_1_KEYS = {"version", "dataset", "model", "model_args", "params", "optimizer", "lr", "epochs", "batch_size",
                 "seed", "device", "loader", "eval_every", "data_dir", "image_folder", "overrides"}


def is_claim_file(name: str) -> bool:
    return name == CLAIM or name.startswith(CLAIM + ".")


def is_ours_hidden(name: str) -> bool:
    """A hidden file this tool leaves: a temporary file of a write cut short, the failure marker, or a claim."""
    return name == FAILURE_MARKER or is_claim_file(name) or any(
        name.startswith(f".{file}.") and name.endswith(".tmp") for file in RUN_FILES)


def leave_failure_marker(folder: Path, message: str) -> None:
    """Leave a failure no restart can fix where processes torchrun restarts will look (--out), so that they end at
    once; only in a new folder or one of this tool's, never among a user's own files."""
    try:
        if folder.exists():
            entries = [entry for entry in folder.iterdir() if not is_ours_hidden(entry.name)]
            if entries and not RunFolder(folder).is_ours() and \
                    not any(entry.is_dir() and RunFolder(entry).is_ours() for entry in entries):
                return
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / FAILURE_MARKER, message + "\n")
    except OSError:
        pass  # without the marker, restarted processes meet the same failure again


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def load_checkpoint(path: Path) -> dict:
    """Tensors and plain values only (weights_only=True), so a crafted file cannot run code."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: the run stopped before its first epoch finished; "
                              "start it again") from None
    except Exception as error:
        if isinstance(error, pickle.UnpicklingError) and ("weights_only" in str(error) or "Unsupported" in str(error)):
            raise CheckpointError(f"{path} holds objects other than tensors and numbers, which could run code; "
                                  "refusing to load it. Use a checkpoint written by this tool") from None
        raise CheckpointError(f"{path} is damaged ({type(error).__name__}): train again in a new folder, or "
                              "start over with --force") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys() or not {"optimizer", "optimizers"} & \
            state.keys():
        raise CheckpointError(f"{path} is not a checkpoint of this tool: train again in a new folder")
    return state


def config_from_record(saved: dict) -> RunConfig:
    """A RunConfig from config.json. The record is flat (the three settings types share no field name); one of
    the first release (format 1) lacks the fields added since, which take the version's recipe and the defaults,
    and its data identity is worked out from the data it names."""
    from configs import BUILT_IN

    row = None if saved.get("ladder") else BUILT_IN.get(saved["version"])  # a ladder file's records are whole
    recipe = from_record(Recipe, {**(asdict(row.recipe) if row else {}), **saved})
    runtime = from_record(Runtime, saved)
    if "data" not in saved:
        from runner.sources import DataSource, data_identity

        try:
            saved = {**saved, "data": data_identity(DataSource(saved["dataset"], runtime.data_dir,
                                                               runtime.image_folder))}
        except RunnerError:
            saved = {**saved, "data": {"dataset": saved["dataset"], "image_folder": {"path": runtime.image_folder}}}
    return RunConfig(saved["version"], saved["dataset"], recipe, from_record(RunIdentity, saved), runtime,
                     dict(saved.get("overrides", {})), dict(saved.get("arm", {})), saved.get("idea", ""))


def check_ladder(run: RunConfig, where: Path) -> None:
    """A saved run is continued, tested or exported with the ladder it was trained on: its ladder file, unchanged
    (found by its hash wherever it now lies), or none for a built-in row. The file is run only when the command line
    names it, never from the path recorded here."""
    from ladder import SOURCE

    recorded = run.identity.ladder
    if recorded.get("sha256") == SOURCE.get("sha256"):
        return
    if not recorded:
        raise RunnerError(f"{where} is a run of the built-in ladder: leave out --ladder")
    if not SOURCE:
        raise RunnerError(f"{where} is a run of the ladder file {recorded['file']}: give --ladder "
                          f"{recorded['file']} again")
    if recorded["file"] == SOURCE["file"]:
        raise RunnerError(f"{SOURCE['file']} changed since {where} was trained with it: give the file as it was "
                          "then, or train the run anew")
    raise RunnerError(f"{SOURCE['file']} is not the ladder file {where} was trained with ({recorded['file']}): give "
                      "that one, unchanged, or train the run anew")


class RunFolder:
    """A run's folder; `writer` is False in every process but the one that writes."""

    def __init__(self, path: Path, writer: bool = True):
        self.path, self.writer = Path(path), writer
        self.guard = None  # called before each checkpoint write: raises when this process may no longer write

    @classmethod
    def new(cls, parent: Path, name: str) -> "RunFolder":
        """parent/name-YYYYmmdd-HHMMSS, made exclusively (-2, -3 ... when taken), so two runs never share one."""
        base = Path(parent) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
        Path(parent).mkdir(parents=True, exist_ok=True)
        candidate, suffix = base, 2
        while True:
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def is_ours(self) -> bool:
        """A folder this tool made: its config.json says so, or has the first release's exact fields."""
        try:
            saved = json.loads((self / CONFIG).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(saved, dict) and (saved.get("tool") == TOOL or FORMAT_1_KEYS <= saved.keys())

    def is_unstarted(self) -> bool:
        """A folder holding nothing but this tool's claim and temporary files: a run a copy is setting up right now,
        or one whose process died before it wrote config.json."""
        try:
            return self.path.is_dir() and all(is_ours_hidden(entry.name) for entry in self.path.iterdir())
        except OSError:
            return False

    def has_checkpoint(self) -> bool:
        return (self / CHECKPOINT).exists()

    def check_free(self, force: bool) -> None:
        """Refuse, touching nothing, a folder that cannot take a new run: anything but a new or empty folder, a run
        of ours that never finished an epoch, or (with force) any run of ours."""
        if not self.path.exists() or self.is_unstarted():
            return
        if not self.is_ours():
            raise RunnerError(f"{self.path} is not empty and not a run folder: give --out a new or empty folder "
                              "(nothing in it was changed)")
        if self.has_checkpoint() and not force:
            raise RunnerError(f"{self.path} holds a run already: continue it with --resume {self.path}, or add "
                              "--force to start over")

    def prepare(self, force: bool) -> None:
        """Make the folder ready for a new run (check_free says which may take one)."""
        self.check_free(force)
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
        self.clear()

    def clear(self, keep_config: bool = False) -> None:
        """Remove this tool's record files (only those: the folder may hold the user's own files too), except
        the claim of the process about to train the run and, with keep_config, config.json and the writes of it
        in flight (a table's run folder keeps it, so that other copies and `status` see the run while it starts
        over, and another copy placing the table's runs may be writing it this instant)."""
        if not self.writer or not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            if is_claim_file(entry.name) or keep_config and (entry.name == CONFIG or entry.name.startswith(
                    f".{CONFIG}.")):
                continue
            if entry.name in RUN_FILES or entry.name.startswith(EVENT_FILES) or is_ours_hidden(entry.name):
                entry.unlink(missing_ok=True)
            elif entry.name == HPARAMS_RUN and entry.is_dir():
                shutil.rmtree(entry)

    def write_config(self, run: RunConfig, **facts) -> None:
        """config.json: the run's settings, what it was trained on and with which software."""
        import torch

        if not self.writer:
            return
        record = {"format": CONFIG_FORMAT, "tool": TOOL, "version": run.version, "dataset": run.dataset,
                  **asdict(run.recipe), **asdict(run.identity), **asdict(run.runtime), "overrides": run.overrides,
                  "arm": run.arm, "idea": run.idea,
                  **facts, "torch": torch.__version__, "torchvision": installed_version("torchvision"),
                  "python": sys.version.split()[0], "written": datetime.now().isoformat(timespec="seconds")}
        write_text(self / CONFIG, json.dumps(record, indent=2) + "\n")

    def read_record(self) -> dict:
        path = self / CONFIG
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not an object")
            return saved
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is not a run folder (no {CONFIG}): give a folder made by a run") \
                from None
        except ValueError as error:
            raise CheckpointError(f"{path} is damaged ({error}); the run's checkpoint is kept: train again in a new "
                                  "folder") from None

    def read_config(self) -> RunConfig:
        try:
            return config_from_record(self.read_record())
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{self / CONFIG} is damaged ({type(error).__name__}: {error}); the run's "
                                  "checkpoint is kept: train again in a new folder") from None

    def save_checkpoint(self, state: dict) -> None:
        """Written beside the old checkpoint and read back before it replaces it."""
        import torch

        if self.guard:
            self.guard()
        if self.writer:
            atomic_write(self / CHECKPOINT, lambda f: torch.save(state, f), verify=load_checkpoint)

    def load_checkpoint(self) -> dict:
        return load_checkpoint(self / CHECKPOINT)

    def epochs_done(self) -> int:
        return int(self.load_checkpoint()["epoch"]) if self.has_checkpoint() else 0

    def catch_up_metrics(self, checkpoint: dict) -> None:
        """metrics.csv is written after each epoch's checkpoint, so a process that ended between the two left it an
        epoch behind: whoever goes on from the checkpoint (holding the run's claim) writes it from the checkpoint's
        rows, and a finished run is then seen as finished."""
        if self.epochs_recorded() < int(checkpoint["epoch"]):
            self.write_metrics(checkpoint["metrics"])

    def epochs_recorded(self) -> int:
        """The epochs metrics.csv holds, read without torch (it is written after the checkpoint of each)."""
        try:
            return max(0, len((self / METRICS).read_text().splitlines()) - 1)
        except FileNotFoundError:
            return 0

    def has_ended(self, epochs: int) -> bool:
        """Failed for good, or trained for epochs, as cheaply as the folder tells (metrics.csv follows the
        checkpoint)."""
        return (self / FAILED).exists() or self.epochs_recorded() >= epochs

    def record_failure(self, message: str) -> None:
        if self.writer:
            write_text(self / FAILED, message + "\n")

    def failure(self) -> str | None:
        """Why the run failed for good, or None."""
        try:
            return (self / FAILED).read_text().strip()
        except FileNotFoundError:
            return None

    def write_metrics(self, metrics: list) -> None:
        if not self.writer:
            return
        lines = [",".join(METRIC_COLUMNS)]
        for row in metrics:
            lines.append(",".join("" if row.get(name) is None else repr(row[name]) for name in METRIC_COLUMNS))
        write_text(self / METRICS, "\n".join(lines) + "\n")

    def write_picture(self, name: str, draw) -> None:
        """draw(f) renders a PNG into the file object f (checked first, as a checkpoint is, by the guard)."""
        if self.guard:
            self.guard()
        if self.writer:
            atomic_write(self / name, draw)
