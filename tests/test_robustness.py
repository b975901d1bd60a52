"""Interruptions in a real process, and fuzzed input to the parser, the dataset readers and checkpoint loading."""
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import checks
from runner import train_command
from runner import records
import train
import forked
from conftest import ROOT, make_mnist, run_cli
from data import DataSource, load_split
from runner.errors import RunnerError


@pytest.fixture
def start(tmp_path):
    """Start main.py in a process of its own (a fork: tests/forked.py); every process started is reaped, even when
    the test fails."""
    processes = []

    def run(*argv) -> forked.Forked:
        process = forked.start([sys.executable, str(ROOT / "main.py"), *map(str, argv), "--quiet", "--threads", "1"])
        processes.append(process)
        return process

    yield run
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def wait_for_checkpoint(process: forked.Forked, run_dir: Path, timeout: float = 120) -> None:
    """Wait until the run has kept an epoch: what the test then asserts on, not a time."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.05)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_a_signal_mid_run_keeps_the_last_epoch_and_the_run_resumes(tmp_path, start, signum, status):
    data = make_mnist(tmp_path / "data", train=2000, test=100)
    run = tmp_path / "run"
    process = start("1", "--epochs", 500, "--batch-size", 16, "--data-dir", data, "--out", run)
    wait_for_checkpoint(process, run)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    assert "Traceback" not in err
    assert f"python main.py --resume {run}" in err.strip().splitlines()[-1]
    done = records.load_checkpoint(run / "checkpoint.pt")["epoch"]
    assert done >= 1 and out.count("Epoch ") == done  # every epoch reported finished was kept, and only those
    resumed = forked.run([sys.executable, str(ROOT / "main.py"), "--resume", str(run), "--epochs", str(done + 1),
                          "--quiet"], timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Epoch {done + 1} / {done + 1}" in resumed.stdout
    assert records.load_checkpoint(run / "checkpoint.pt")["epoch"] == done + 1


@pytest.mark.slow
def test_a_table_interrupted_names_the_command_that_continues_it(tmp_path, start):
    data = make_mnist(tmp_path / "data", train=2000, test=100)
    table = tmp_path / "table"
    process = start("1", "--seeds", "0,1", "--epochs", 500, "--data-dir", data, "--out", table)
    wait_for_checkpoint(process, table / "v1-seed0")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Continue with: python main.py 1 --epochs 500 --seeds 0,1 " in err and f"--out {table}" in err


def test_out_of_memory_is_one_line_with_a_hint(monkeypatch, tmp_path):
    data = make_mnist(tmp_path / "data", train=50, test=20)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "train_step", out_of_memory)
    code, _, err = run_cli("1", "--epochs", 1, "--data-dir", data, "--out", tmp_path / "run", "--quiet")
    assert code == 1 and "out of memory" in err and "--batch-size" in err and "Traceback" not in err


words = st.sampled_from(["1", "9", "all", "1,3", "6-9", "0", "10", "--epochs", "--lr", "--batch-size", "--seed",
                         "--seeds", "--device", "--loader", "--eval-every", "--threads", "--resume", "--out",
                         "--image-folder", "--data-dir", "cpu", "cuda", "nan", "-1", "1e-3", "x", "", "--", "-",
                         "resident", "list", "--help", "--amp"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(words, st.text(max_size=12)), max_size=6))
def test_the_parser_never_raises_on_any_argument_list(argv):
    parser = train_command.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code in (0, 2)
        return
    try:
        checks.check_training_args(parser, args)
    except SystemExit as exit_:
        assert exit_.code == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000), st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]))
def test_random_bytes_in_an_idx_file_give_a_data_error(tmp_path_factory, payload, name):
    root = make_mnist(tmp_path_factory.mktemp("fuzz"), train=20, test=10)
    (root / "MNIST" / "raw" / name).write_bytes(payload)
    try:
        split = load_split(DataSource("mnist", str(root)), True)
    except RunnerError as error:
        assert name in str(error)
        return
    assert split.images.shape[1:] == (1, 28, 28) and len(split.images) == len(split.labels)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_random_bytes_as_a_cifar_batch_give_a_data_error(tmp_path_factory, payload):
    from conftest import make_cifar

    with pytest.MonkeyPatch.context() as patch:
        root = make_cifar(tmp_path_factory.mktemp("fuzz"), patch, per_batch=4, test=4)
        (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(payload)
        with pytest.raises(RunnerError, match="data_batch_2"):
            load_split(DataSource("cifar10", str(root)), True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4000))
def test_random_bytes_as_a_checkpoint_give_a_checkpoint_error(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("fuzz") / "checkpoint.pt"
    path.write_bytes(payload)
    with pytest.raises(RunnerError):
        records.load_checkpoint(path)


def test_damaged_checkpoint_bytes_keep_the_zip_header(tmp_path):
    path = tmp_path / "checkpoint.pt"
    records.RunFolder(tmp_path).save_checkpoint({name: 0 for name in records.CHECKPOINT_KEYS | {"optimizers"}})
    data = bytearray(path.read_bytes())
    for offset in range(64, len(data), 97):
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(RunnerError):
        records.load_checkpoint(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=1500))
def test_random_bytes_as_an_image_give_a_data_error_naming_it(tmp_path_factory, payload):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path_factory.mktemp("fuzz"), train=10, test=10)
    victim = sorted((root / "train").rglob("*.png"))[3]
    victim.write_bytes(payload)
    with pytest.raises(RunnerError, match=victim.name):
        load_split(DataSource("cifar10", "unused", str(root), None), True)
