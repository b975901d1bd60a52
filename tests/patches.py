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
- epochs: every process appends "RUN_FOLDER EPOCH" to PROBE_DIR/epochs-PID for each epoch it finishes, and each
  training step sleeps STEP_DELAY seconds (so that a test can stop a run in the middle).
"""
import atexit
import json
import os
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


def apply(patch: str) -> None:
    """Put the named probe or fault in place (see the module's docstring)."""
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
