"""Probes and faults for tests that run main.py in other processes (patched_main.py, torchrun, Slurm tasks);
PATCH in the environment names one:

- weights: every process, not only the writer, saves its model's weights beside the checkpoint;
- fail: the process of rank 1 fails with a RunnerError at its third step;
- kill: the process of rank 1 kills itself (SIGKILL) after the first epoch, unless it was restarted;
- steps: every process writes its pid to PROBE_DIR/pid-rank{RANK} as it starts, and the number of training steps
  it began to PROBE_DIR/steps-rank{RANK} as it exits;
- probes: every process writes to PROBE_DIR/probes-rank{RANK}, as it exits, how many images it decoded and the
  names of the files it wrote;
- wrap: every process writes to PROBE_DIR/wrap-rank{RANK} the process group's backend and the kinds of BatchNorm
  in the model it trains (for the CUDA test of NCCL and --sync-bn);
- epochs: every process appends "RUN_FOLDER EPOCH" to PROBE_DIR/epochs-PID for each epoch it finishes, and
  "RUN_FOLDER EPOCH RECORDED" to PROBE_DIR/begun-PID as it begins one (RECORDED: the epochs metrics.csv holds then),
  and each training step sleeps STEP_DELAY seconds (so that a test can stop a run in the middle);
- windows: the moments where a crash hurts most last WINDOW_DELAY seconds (default 0.15): a claim's (or takeover
  lock's) file written but not linked, a claim linked but not beating yet (a lock just taken), a takeover or release
  holding the folder's lock, a run folder being cleared (its hparams/ removed) or just cleared, and a run folder's
  file (config.json, checkpoint.pt, metrics.csv, failed.txt) written but not yet in place; PROBE_DIR/window-PID
  names the moment while the process is inside it (so that a kill can land there);
- cleared: the process writes PROBE_DIR/cleared-PID, the line count of every PROBE_DIR/epochs-* file, as --force
  (holding every claim) clears the first run folder, so that epochs trained before can be told from those after;
- unguarded: a defect, for checking that the soak test catches one: claims are taken whoever holds them, and an
  owner never finds it lost its claim.

PATCH may name several, separated by commas.
"""
import atexit
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner import files  # noqa: E402
from runner import records  # noqa: E402
import train  # noqa: E402
from runner.errors import RunnerError  # noqa: E402

RANK = int(os.environ.get("RANK", 0))
save_checkpoint, train_step, run_epoch = records.RunFolder.save_checkpoint, train.train_step, train.run_epoch
steps = []


def save_with_weights(folder, state):
    import torch

    torch.save(state["model"], folder.path / f"weights-rank{RANK}.pt")
    save_checkpoint(folder, state)


def failing_step(*args):
    steps.append(1)
    if RANK == 1 and len(steps) == 3:
        raise RunnerError("rank 1 failed on purpose")
    return train_step(*args)


def counted_step(*args):
    steps.append(1)
    return train_step(*args)


def recorded_epoch(state, run, folder, *args):
    with open(Path(os.environ["PROBE_DIR"]) / f"begun-{os.getpid()}", "a") as f:
        f.write(f"{folder.path.name} {args[-3]} {folder.epochs_recorded()}\n")
    finished = run_epoch(state, run, folder, *args)
    with open(Path(os.environ["PROBE_DIR"]) / f"epochs-{os.getpid()}", "a") as f:
        f.write(f"{folder.path.name} {args[-3]}\n")
    return finished


def slow_step(*args):
    time.sleep(float(os.environ.get("STEP_DELAY", 0)))
    return train_step(*args)


def write_steps():
    (Path(os.environ["PROBE_DIR"]) / f"steps-rank{RANK}").write_text(str(len(steps)))


def write_probes(counted: dict) -> None:
    (Path(os.environ["PROBE_DIR"]) / f"probes-rank{RANK}").write_text(json.dumps(counted))


def probe_decoding_and_writing() -> None:
    import data

    counted = {"decoded": 0, "written": []}
    decode_image, atomic_write = data.decode_image, records.atomic_write

    def counted_decode(*args, **kwargs):
        counted["decoded"] += 1
        return decode_image(*args, **kwargs)

    def counted_write(path, *args, **kwargs):
        counted["written"].append(Path(path).name)
        return atomic_write(path, *args, **kwargs)

    # every file of a run is written through files.atomic_write: records' own name for it, and write_text's
    data.decode_image, records.atomic_write, files.atomic_write = counted_decode, counted_write, counted_write
    atexit.register(write_probes, counted)


def probe_wrapping() -> None:
    from runner import distributed

    wrap = distributed.Group.wrap

    def recorded_wrap(group, model, device, sync_bn):
        wrapped = wrap(group, model, device, sync_bn)
        kinds = sorted({type(module).__name__ for module in wrapped.modules() if "BatchNorm" in type(module).__name__})
        (Path(os.environ["PROBE_DIR"]) / f"wrap-rank{RANK}").write_text(json.dumps(
            {"backend": distributed.dist.get_backend(), "batch_norm": kinds}))
        return wrapped

    distributed.Group.wrap = recorded_wrap


def save_then_die(folder, state):
    save_checkpoint(folder, state)
    if RANK == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        os.kill(os.getpid(), signal.SIGKILL)


WINDOW_FILES = (records.CONFIG, records.CHECKPOINT, records.METRICS, records.FAILED)


def pause_in(window: str) -> None:
    marker = Path(os.environ["PROBE_DIR"]) / f"window-{os.getpid()}"
    marker.write_text(window)
    time.sleep(float(os.environ.get("WINDOW_DELAY", 0.15)))
    marker.unlink()


def paused_after(window: str, function):
    def paused(*args, **kwargs):
        result = function(*args, **kwargs)
        pause_in(window)
        return result

    return paused


def paused_before(window: str, function):
    def paused(*args, **kwargs):
        pause_in(window)
        return function(*args, **kwargs)

    return paused


def widen_windows() -> None:
    from runner import claims, files

    atomic_write = files.atomic_write

    def paused_write(path, write, verify=None):
        def write_then_pause(f):
            write(f)
            if Path(path).name in WINDOW_FILES:
                pause_in(f"writing {Path(path).name}")

        atomic_write(path, write_then_pause, verify)

    files.atomic_write = records.atomic_write = paused_write
    claims.written = paused_after("claim or lock file written, not linked", claims.written)
    claims.link_new = paused_after("claim or lock linked", claims.link_new)
    claims.Claim.replace = paused_before("taking over under the lock", claims.Claim.replace)
    claims.Lock.release = paused_before("releasing the lock", claims.Lock.release)
    records.RunFolder.clear = paused_after("run folder cleared", records.RunFolder.clear)
    rmtree = shutil.rmtree

    def paused_rmtree(path, *args, **kwargs):
        if Path(path).name == records.HPARAMS_RUN:
            pause_in("clearing a run folder")
        rmtree(path, *args, **kwargs)

    shutil.rmtree = paused_rmtree


def snapshot_before_clearing() -> None:
    clear = records.RunFolder.clear
    snapshot = Path(os.environ["PROBE_DIR"]) / f"cleared-{os.getpid()}"

    def clear_after_snapshot(folder, *args, **kwargs):
        if not snapshot.exists():  # the first clear is --force's, before the table starts
            probe = Path(os.environ["PROBE_DIR"])
            snapshot.write_text(json.dumps({path.name: len(path.read_text().splitlines())
                                            for path in probe.glob("epochs-*")}))
        clear(folder, *args, **kwargs)

    records.RunFolder.clear = clear_after_snapshot


def take_unguarded(watcher, folder):
    from runner import claims

    Path(folder).mkdir(parents=True, exist_ok=True)
    claim = claims.Claim(Path(folder), watcher.lease)
    claim.replace()
    return claim.start()


def remove_claim_checks() -> None:
    from runner import claims

    claims.Watcher.take = take_unguarded
    claims.Claim.check = lambda claim: None


def apply(patches: str) -> None:
    """Put the named probes or faults in place (see the module's docstring)."""
    for patch in patches.split(","):
        apply_one(patch)


def apply_one(patch: str) -> None:
    if patch == "weights":
        records.RunFolder.save_checkpoint = save_with_weights
    elif patch == "fail":
        train.train_step = failing_step
    elif patch == "kill":
        records.RunFolder.save_checkpoint = save_then_die
    elif patch == "wrap":
        probe_wrapping()
    elif patch == "probes":
        probe_decoding_and_writing()
    elif patch == "epochs":
        train.run_epoch, train.train_step = recorded_epoch, slow_step
    elif patch == "steps":
        (Path(os.environ["PROBE_DIR"]) / f"pid-rank{RANK}").write_text(str(os.getpid()))
        train.train_step = counted_step
        atexit.register(write_steps)
    elif patch == "windows":
        widen_windows()
    elif patch == "cleared":
        snapshot_before_clearing()
    elif patch == "unguarded":
        remove_claim_checks()
