"""The core's contracts: run folders of the first release (format 1) still load, resume and evaluate; settings
follow from their types; a signal at any point (a checkpoint write, a test pass, an image-folder decode) stops
cleanly in a real process, keeping every finished epoch."""
import csv
import shutil
import signal
import subprocess
import sys
from dataclasses import fields

import pytest

from runner import train_command
from runner import records
import forked
from conftest import ROOT, make_image_folder, make_mnist, read_metrics
from runner.settings import Recipe, RunIdentity, Runtime, flag_fields, resumable_names
from runner.loaders import EVAL_BATCH

FIXTURE = ROOT / "tests" / "fixtures" / "format1-v3"


@pytest.mark.parametrize("checkpoint_format", [1, 2])
def test_an_older_run_folder_loads_resumes_and_evaluates(cli, tmp_path, checkpoint_format):
    """Each fixture was made by the release that wrote its checkpoint format (1: the first, 2: the last before two
    optimizers): `main.py 3 --epochs 2 --batch-size 32 --lr 0.05` on the tiny Fashion-MNIST of conftest; the same
    release trained 4 epochs into format{1,2}-v3-4-epochs.csv."""
    run = tmp_path / "old run"
    shutil.copytree(ROOT / "tests" / "fixtures" / f"format{checkpoint_format}-v3", run)
    assert records.load_checkpoint(run / "checkpoint.pt").get("format", 1) == checkpoint_format
    data = make_mnist(tmp_path / "data", "FashionMNIST")
    loaded = records.RunFolder(run).read_config()
    assert (loaded.version, loaded.recipe.model, loaded.recipe.lr) == (3, "SmallConvNet", 0.05)
    assert loaded.identity.data["dataset"] == "fashion_mnist"
    code, out, err = cli("--resume", run, "--epochs", 4, "--data-dir", data, "--cache-dir", tmp_path / "cache",
                         "--device", "cpu", "--quiet")
    assert code == 0, err
    with open(run / "metrics.csv", newline="") as f:
        resumed = list(csv.DictReader(f))
    with open(ROOT / "tests" / "fixtures" / f"format{checkpoint_format}-v3-4-epochs.csv", newline="") as f:
        expected = list(csv.DictReader(f))
    assert len(resumed) == 4
    for ours, theirs in zip(resumed, expected):
        for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert float(ours[name]) == pytest.approx(float(theirs[name]), abs=1e-5), (ours["epoch"], name)
    code, out, err = cli("eval", run, "--data-dir", data, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert out.startswith(f"Test Loss: {float(resumed[-1]['test_loss']):.4f} | Test Acc: "
                          f"{float(resumed[-1]['test_acc']):.4f}")


def test_a_damaged_config_never_advises_deleting_a_run_whose_checkpoint_loads(cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "config.json").write_text("{ half a file")
    code, _, err = cli("eval", run)
    assert code == 1 and "damaged" in err and "checkpoint is kept" in err and "delete" not in err


def test_flags_follow_from_the_settings_types():
    parser = train_command.build_parser()
    destinations = {action.dest for action in parser._actions}
    for kind in (Recipe, RunIdentity, Runtime):
        assert {f.name for f in flag_fields(kind)} <= destinations
    assert resumable_names() == {f.name for f in flag_fields(Runtime)} | {"epochs"}
    assert not {"seed", "loader", "amp", "lr", "batch_size"} & resumable_names()
    names = [f.name for kind in (Recipe, RunIdentity, Runtime) for f in fields(kind)]
    assert len(names) == len(set(names))  # config.json is flat: no field name may repeat across the types


CHILD = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import {module} as target
real, calls = target.{function}, []

def patched(*args, **kwargs):
    calls.append(1)
    if len(calls) == {at}:
        for _ in range({times}):
            os.kill(os.getpid(), signal.{signal})
        time.sleep({pause})
    return real(*args, **kwargs)

target.{function} = patched
import main
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.fixture
def child(tmp_path):
    """Start main.py in a process of its own (a fork: tests/forked.py) with a signal sent to itself `times` times
    on the at-th call of module.function, which then pauses `pause` seconds before doing its work; the process is
    always reaped, even when the test fails."""
    processes = []

    def start(module: str, function: str, at: int, signum: str, *argv, times: int = 1, pause: float = 0):
        code = CHILD.format(root=str(ROOT), module=module, function=function, at=at, signal=signum, times=times,
                            pause=pause)
        process = forked.start([sys.executable, "-c", code, *map(str, argv), "--quiet", "--threads", "1"],
                               cwd=tmp_path)
        processes.append(process)
        out, err = process.communicate(timeout=180)
        return process.returncode, out, err

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def resume(run, epochs: int) -> subprocess.CompletedProcess:
    return forked.run([sys.executable, str(ROOT / "main.py"), "--resume", str(run), "--epochs", str(epochs),
                       "--quiet"], timeout=180)


@pytest.mark.slow
def test_a_run_killed_between_its_last_checkpoint_and_metrics_csv_is_finished_by_the_same_command(child, tmp_path):
    """The last epoch's checkpoint is in place and metrics.csv, written after it, still lacks that epoch: the same
    command (and a --resume) writes metrics.csv again from the checkpoint instead of leaving it an epoch short."""
    data, table = make_mnist(tmp_path / "data"), tmp_path / "table"
    argv = ("1", "--seeds", 0, "--epochs", 2, "--data-dir", data, "--out", table)
    code, _, err = child("runner.records", "RunFolder.write_metrics", 2, "SIGKILL", *argv)
    run = table / "v1-seed0"
    assert code == -signal.SIGKILL and records.load_checkpoint(run / "checkpoint.pt")["epoch"] == 2, err
    assert len(read_metrics(run)) == 1
    shutil.copytree(run, tmp_path / "single")
    again = forked.run([sys.executable, str(ROOT / "main.py"), *map(str, argv), "--quiet"], timeout=180)
    assert again.returncode == 0 and "v1-seed0; skipped" in again.stdout, again.stderr
    assert [row["epoch"] for row in read_metrics(run)] == ["1", "2"]
    finished = resume(tmp_path / "single", 2)
    assert finished.returncode != 0 and "already finished 2 epochs" in finished.stderr
    assert read_metrics(tmp_path / "single") == read_metrics(run)


@pytest.mark.slow
def test_a_signal_during_a_checkpoint_write_keeps_that_epoch(child, tmp_path):
    data, run = make_mnist(tmp_path / "data"), tmp_path / "run"
    code, out, err = child("runner.records", "RunFolder.save_checkpoint", 1, "SIGINT", "1", "--epochs", 5,
                           "--data-dir", data, "--out", run)
    assert code == 130 and "Traceback" not in err, err
    assert records.load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and out.count("Epoch 1 / 5") == 1
    assert not [entry for entry in run.iterdir() if entry.name.endswith(".tmp")]
    assert err.strip().splitlines()[-1].endswith(f"Continue with: python main.py --resume {run}")
    finished = resume(run, 5)
    assert finished.returncode == 0, finished.stderr
    assert [line.split(" |")[0] for line in finished.stdout.splitlines() if line.startswith("Epoch")] == \
        [f"Epoch {epoch} / 5" for epoch in range(2, 6)]


@pytest.mark.slow
def test_a_signal_during_a_test_pass_keeps_the_epoch_before(child, tmp_path):
    data, run = make_mnist(tmp_path / "data", test=1100), tmp_path / "run"
    test_batches = -(-1100 // EVAL_BATCH)  # the signal comes in the second batch of epoch 2's test
    code, out, err = child("train", "tta_output", test_batches + 2, "SIGTERM", "1", "--epochs", 4,
                           "--batch-size", 32, "--data-dir", data, "--out", run)
    assert code == 143 and "Traceback" not in err, err
    assert records.load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and "Epoch 2" not in out
    assert resume(run, 4).returncode == 0


@pytest.mark.slow
def test_a_signal_during_an_image_folder_decode_stops_and_the_same_command_starts_again(child, tmp_path):
    folder, run = make_image_folder(tmp_path / "images"), tmp_path / "run"
    argv = ("7", "--epochs", 1, "--image-folder", folder, "--out", run, "--cache-dir", tmp_path / "cache")
    code, out, err = child("data", "decode_image", 5, "SIGINT", *argv)
    assert code == 130 and "Traceback" not in err, err
    assert "start the run again" in err and "Training..." not in out
    assert not list((tmp_path / "cache").glob("*.pt"))
    again = forked.run([sys.executable, str(ROOT / "main.py"), *map(str, argv), "--quiet"], timeout=180)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_a_second_signal_stops_at_once(child, tmp_path):
    """Two Ctrl-Cs as the first checkpoint is about to be written (a moment the flag alone would let pass): the
    second ends the process there, so the write never happens, instead of after a 30-second pause."""
    data, run = make_mnist(tmp_path / "data"), tmp_path / "run"
    code, _, err = child("runner.records", "RunFolder.save_checkpoint", 1, "SIGINT", "1", "--epochs", 2,
                         "--data-dir", data, "--out", run, times=2, pause=30)
    assert code == 130 and "Traceback" not in err, err
    assert not (run / "checkpoint.pt").exists() and "start the run again" in err


def test_a_stop_lands_between_two_training_steps(cli, tmp_path, monkeypatch):
    import signal

    from runner import console
    import train

    real_step, calls = train.train_step, []

    def step_then_ask_to_stop(*args):
        calls.append(1)
        if len(calls) == 3:
            console.STOP.signum = signal.SIGINT  # as the handler does
        return real_step(*args)

    monkeypatch.setattr(train, "train_step", step_then_ask_to_stop)
    code, _, err = cli("1", "--epochs", 1, "--batch-size", 32, "--data-dir", make_mnist(tmp_path / "data"), "--out",
                       tmp_path / "run", "--quiet")
    assert code == 130 and len(calls) == 3, err  # the epoch has 7 steps


def test_progress_is_read_every_50_steps_and_at_the_end_of_the_epoch(cli, tmp_path, monkeypatch):
    import train

    real_check, readings = train.check_progress, []
    monkeypatch.setattr(train, "check_progress", lambda state, window, seen, epoch, step: readings.append(step) or
                        real_check(state, window, seen, epoch, step))
    code, _, err = cli("1", "--epochs", 1, "--batch-size", 4, "--data-dir", make_mnist(tmp_path / "data", train=240),
                       "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    assert readings == [50, 60]


def test_an_unexpected_failure_is_one_line_never_a_traceback(cli, tmp_path, monkeypatch):
    from runner import commands
    import train

    monkeypatch.delenv(commands.TRACEBACK, raising=False)
    monkeypatch.setattr(train, "train_step", lambda *args: (_ for _ in ()).throw(ValueError("boom")))
    code, _, err = cli("1", "--epochs", 1, "--data-dir", make_mnist(tmp_path / "data"), "--out", tmp_path / "run")
    assert code == 1 and err.strip().splitlines() == [
        f"error: unexpected ValueError: boom (set {commands.TRACEBACK}=1 to see where; please report it with the "
        "command that led to it)"]
