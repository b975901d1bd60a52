"""Several processes on the CPU (gloo), on tiny data, through torchrun and its launcher API, on free ports."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from runner import records
import forked
from conftest import ROOT, make_image_folder, make_mnist, read_metrics
from runner.distributed import free_port

pytestmark = pytest.mark.slow  # real processes, or a long search

MAIN = str(ROOT / "main.py")
PATCHED = str(ROOT / "tests" / "patched_main.py")


def torchrun(*argv, processes: int = 2, patch: str | None = None, restarts: int = 0, timeout: float = 240,
             cwd=None, probe_dir=None):
    """torchrun --standalone with `processes` processes on main.py (or the patched main with PATCH=patch)."""
    environment = dict(os.environ, PATCH=patch or "", PYTHONUNBUFFERED="1", PROBE_DIR=str(probe_dir or ""))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               f"--max-restarts={restarts}", "--monitor-interval=0.2", PATCHED if patch else MAIN,
               *map(str, argv), "--quiet", "--threads", "2"]
    return forked.run(command, env=environment, cwd=cwd, timeout=timeout)


def alone(*argv):
    return forked.run([sys.executable, MAIN, *map(str, argv), "--quiet", "--threads", "1"], timeout=240)


def metrics(run) -> list:
    """metrics.csv without the times, which differ between runs."""
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in read_metrics(run)]


def test_two_processes_train_the_mlp_as_one_process_does(tmp_path):
    data = make_mnist(tmp_path / "data", train=199)  # the last batch of 7 splits 4 / 3: weighted to the global mean
    common = ("1", "--epochs", 2, "--batch-size", 32, "--lr", 0.05, "--data-dir", data, "--device", "cpu")
    two = torchrun(*common, patch="weights", cwd=tmp_path)  # no --out: the first process chooses it for all
    assert two.returncode == 0, two.stderr
    [chosen] = list((tmp_path / "runs").iterdir())
    one = alone(*common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    ranks = [torch.load(chosen / f"weights-rank{rank}.pt") for rank in (0, 1)]
    single = records.load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]
    for name in single:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], single[name], atol=1e-5), name
    assert two.stdout.count("Epoch 2 / 2") == 1
    assert two.stdout.splitlines()[-1] == f"Run folder: {chosen.relative_to(tmp_path)}"


def test_two_processes_hold_out_the_same_images_and_validate_as_one_process_does(tmp_path):
    data = make_mnist(tmp_path / "data", train=199)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / "MNIST" / "raw" / name).write_bytes(b"damaged")  # never read under --holdout
    common = ("1", "--holdout", 39, "--epochs", 2, "--batch-size", 32, "--lr", 0.05, "--data-dir", data, "--device",
              "cpu")
    two = torchrun(*common, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    one = alone(*common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    for split, other in zip(metrics(tmp_path / "two"), metrics(tmp_path / "one")):
        assert split["val_acc"] == other["val_acc"] and split["test_acc"] == "" and float(split["val_acc"]) > 0
        assert float(split["val_loss"]) == pytest.approx(float(other["val_loss"]), rel=1e-4)


def test_two_processes_on_a_batchnorm_version_write_one_folder_test_everything_and_resume_exactly(tmp_path):
    folder = make_image_folder(tmp_path / "images", train=48, test=31)  # shares of 16 and 15 test images
    common = ("7", "--batch-size", 16, "--image-folder", folder)
    assert torchrun(*common, "--epochs", 3, "--out", tmp_path / "whole").returncode == 0
    assert torchrun(*common, "--epochs", 1, "--out", tmp_path / "parts").returncode == 0
    resumed = torchrun("--resume", tmp_path / "parts", "--epochs", 3)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "parts", "whole"]
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "parts")
    state = records.load_checkpoint(tmp_path / "parts" / "checkpoint.pt")
    assert len(state["processes"]) == 2
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["threads"] == 1  # --threads 2, split
    accuracies = [float(row["test_acc"]) for row in metrics(tmp_path / "whole")]
    assert any(0 < accuracy < 1 for accuracy in accuracies)  # so that a count of 16 or 15 would show below
    for accuracy in accuracies:
        assert accuracy * 31 == pytest.approx(round(accuracy * 31))  # correct answers out of all 31 images


def test_a_failing_rank_ends_every_process_with_its_one_line(tmp_path):
    data = make_mnist(tmp_path / "data")
    started = time.monotonic()
    result = torchrun("1", "--epochs", 50, "--batch-size", 16, "--data-dir", data, "--out", tmp_path / "run",
                      patch="fail", timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - started < 90
    assert result.stderr.count("error: rank 1 failed on purpose") == 1


def test_a_killed_worker_is_restarted_and_the_run_has_every_epoch_once(tmp_path):
    data = make_mnist(tmp_path / "data")
    result = torchrun("1", "--epochs", 3, "--batch-size", 32, "--data-dir", data, "--out", tmp_path / "run",
                      patch="kill", restarts=1)
    assert result.returncode == 0, result.stderr
    assert [row["epoch"] for row in metrics(tmp_path / "run")] == ["1", "2", "3"]
    assert result.stdout.count("Epoch 1 / 3") == 1  # the restarted processes continued; they did not start over


def test_restarts_need_an_out_folder(tmp_path):
    result = torchrun("1", "--epochs", 1, "--data-dir", make_mnist(tmp_path / "data"), restarts=1, timeout=120,
                      processes=1)
    assert result.returncode != 0 and result.stderr.count("give --out") == 2  # the first try and the restart


def test_a_failure_no_restart_can_fix_ends_restarted_processes_at_once(tmp_path):
    result = torchrun("1", "--epochs", 1, "--batch-size", 33, "--data-dir", make_mnist(tmp_path / "data"), "--out",
                      tmp_path / "run", restarts=2, timeout=120)
    assert result.returncode != 0
    assert "--batch-size 33 does not divide among 2 processes" in result.stderr
    assert "does not divide" in (tmp_path / "run" / records.FAILURE_MARKER).read_text()
    # The restarted processes found the failure in --out and ended with it at once, never parsing their way to the
    # usage error again. (How many attempts printed before torchrun stopped them is a race between the processes.)
    assert result.stderr.count("usage:") <= 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_two_processes_share_a_table_and_restarted_ones_take_their_claims_back_at_once(tmp_path):
    """Rank 1 dies after its run's first epoch; torchrun restarts both, and the run it held is taken back without
    waiting out the lease (600 s)."""
    data = make_mnist(tmp_path / "data")
    make_mnist(tmp_path / "data", "FashionMNIST")
    started = time.monotonic()
    result = torchrun("1,3", "--epochs", 2, "--batch-size", 32, "--data-dir", data, "--out", tmp_path / "table",
                      "--lease", 600, patch="kill", restarts=1)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 200
    with open(tmp_path / "table" / "results.csv", newline="") as f:
        assert [row["version"] for row in csv.DictReader(f)] == ["1", "3"]
    for run in ("v1", "v3"):
        assert [row["epoch"] for row in read_metrics(tmp_path / "table" / run)] == ["1", "2"]
        assert json.loads((tmp_path / "table" / run / "config.json").read_text())["rank"] in (0, 1)


def test_two_machines_meet_on_one_rendezvous(tmp_path):
    data = make_mnist(tmp_path / "data")
    port = free_port()
    nodes = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   f"--node-rank={node}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                   "--rdzv-id=two-nodes", MAIN, "1", "--epochs", "1", "--batch-size", "32", "--data-dir", str(data),
                   "--out", str(tmp_path / "run"), "--quiet", "--threads", "1"]
        nodes.append(forked.start(command))
    try:
        outputs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            node.kill() if node.poll() is None else None
    assert [node.returncode for node in nodes] == [0, 0], [err for _, err in outputs]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2


def stop_a_long_run(tmp_path, stop) -> tuple[str, str, list]:
    """Two processes train a long run of version 1 (PATCH=steps); once its first checkpoint is written,
    stop(torchrun process, pid of rank 1) signals it. Returns stdout, stderr and each rank's count of steps begun."""
    data = make_mnist(tmp_path / "data", train=2000)
    run, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", PATCHED, "1",
               "--epochs", "500", "--batch-size", "16", "--data-dir", str(data), "--out", str(run), "--quiet",
               "--threads", "2"]
    process = forked.start(command, env=dict(os.environ, PATCH="steps", PROBE_DIR=str(probe), PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 120
        while not ((run / "checkpoint.pt").exists() and (probe / "pid-rank1").exists()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        stop(process, int((probe / "pid-rank1").read_text()))
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    done = records.load_checkpoint(run / "checkpoint.pt")["epoch"]
    assert out.count("Epoch ") == done and err.count("Continue with:") == 1, err
    assert "]: Traceback" not in err  # none from our processes (torchrun's own report may follow)
    return out, err, [int((probe / f"steps-rank{rank}").read_text()) for rank in (0, 1)]


def test_a_signal_to_torchrun_stops_every_process_after_the_same_step(tmp_path):
    _, _, steps = stop_a_long_run(tmp_path, lambda torchrun, rank1: torchrun.send_signal(signal.SIGTERM))
    assert steps[0] == steps[1]


def test_a_signal_to_one_process_stops_every_process_after_the_same_step(tmp_path):
    """Only rank 1 is told to stop: rank 0 learns it through the agreement, one step late, and stops after the
    same step (stopping alone, rank 1 would leave rank 0 waiting in a step it can never finish)."""
    _, err, steps = stop_a_long_run(tmp_path, lambda torchrun, rank1: os.kill(rank1, signal.SIGTERM))
    assert steps[0] == steps[1] and "interrupted; every finished epoch is kept" in err


SLURM_TASK = """import signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from runner import claims, slurm, train_command

out = Path(sys.argv[2])


def requeue(signum, frame):  # as submitit's handler: it requeues the task, and the task ends
    held = sorted(entry.name for entry in out.iterdir() if entry.is_dir() and claims.read_claim(entry))
    print(f"requeued; claims held: {held}", flush=True)
    sys.exit(99)


signal.signal(signal.SIGUSR2, requeue)
sys.exit(slurm.Task(train_command.run, sys.argv[3:])(0))
"""


def test_a_slurm_tasks_processes_stop_on_its_requeue_signal_and_release_their_claims_before_it_requeues(tmp_path):
    """A Slurm task with several GPUs launches its processes (--procs, here on the CPU); the requeue signal reaches
    the task's launcher, which passes it on: each process stops between two steps and releases its claim, and only
    then is the task requeued."""
    data = make_mnist(tmp_path / "data", train=2000)
    table, script = tmp_path / "table", tmp_path / "task.py"
    script.write_text(SLURM_TASK)
    task = subprocess.Popen([sys.executable, script, ROOT, table, "1", "--seeds", "0,1", "--epochs", "500",
                             "--batch-size", "16", "--data-dir", data, "--out", table, "--procs", "2", "--device",
                             "cpu", "--threads", "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 120
        while not all((table / f"v1-seed{seed}" / "checkpoint.pt").exists() for seed in (0, 1)):
            assert task.poll() is None and time.monotonic() < deadline, task.communicate()
            time.sleep(0.05)
        task.send_signal(signal.SIGUSR2)
        out, err = task.communicate(timeout=120)
    finally:
        if task.poll() is None:
            task.kill()
    assert task.returncode == 99 and "requeued; claims held: []" in out, (out, err)
    assert "preempted or timed out; its claim is released, requeueing" in err
    assert "interrupted; every finished epoch is kept" in err and "Traceback" not in err
    for seed in (0, 1):
        done = records.load_checkpoint(table / f"v1-seed{seed}" / "checkpoint.pt")["epoch"]
        assert 1 <= done < 500 and len(read_metrics(table / f"v1-seed{seed}")) == done


def test_a_sync_bn_run_resumed_on_the_cpu_is_a_usage_error(cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("1", "--epochs", 1, "--data-dir", make_mnist(tmp_path / "data"), "--out", run, "--quiet")
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "sync_bn": True}))  # as if started on GPUs with it
    code, _, err = cli("--resume", run, "--epochs", 2, "--device", "cpu")
    assert code == 2 and "--sync-bn (this run was started with it) needs" in err.strip().splitlines()[-1]


def test_the_failure_marker_goes_only_into_a_new_folder_or_one_of_ours(cli, tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    run = tmp_path / "run"
    assert cli("1", "--epochs", 1, "--data-dir", make_mnist(tmp_path / "data"), "--out", run, "--quiet")[0] == 0
    for folder in (users, run, tmp_path / "new"):
        records.leave_failure_marker(folder, "error: bad data")
    assert sorted(path.name for path in users.iterdir()) == ["notes.txt"]
    assert (run / records.FAILURE_MARKER).read_text() == (tmp_path / "new" / records.FAILURE_MARKER).read_text() \
        == "error: bad data\n"


def test_each_process_gets_its_own_device(monkeypatch):
    from runner import distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("auto", "cuda"):
        with pytest.raises(ValueError, match="2 processes on this machine but 1 CUDA GPU"):
            distributed.process_device(name)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.process_device("auto") == "cuda:1" and distributed.process_device("cuda") == "cuda:1"
    assert distributed.process_device("cuda:2,cuda:3") == "cuda:3" and distributed.process_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="share one GPU"):
        distributed.process_device("cuda:0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="need as many devices"):
        distributed.process_device("cuda:0,cuda:1")


def test_test_batches_are_never_dropped_across_processes():
    from runner.loaders import BatchPlan

    shares = [BatchPlan(9, 8, rank=rank, world_size=4, training=False).batches(None) for rank in range(4)]
    assert sorted(int(i) for plan in shares for index, _ in plan for i in index) == list(range(9))
    assert [len(plan[-1][0]) for plan in shares] == [1, 0, 0, 0]
    assert len(BatchPlan(9, 8, rank=0, world_size=4).batches(None)) == 1  # training drops a last batch of 1


def test_a_run_continues_on_another_number_of_processes(tmp_path):
    data = make_mnist(tmp_path / "data")
    run = tmp_path / "run"
    assert alone("1", "--epochs", 1, "--batch-size", 32, "--data-dir", data, "--out", run).returncode == 0
    resumed = torchrun("--resume", run, "--epochs", 2)
    assert resumed.returncode == 0, resumed.stderr
    assert [row["epoch"] for row in metrics(run)] == ["1", "2"]
    assert len(records.load_checkpoint(run / "checkpoint.pt")["processes"]) == 2


def test_one_process_per_machine_prepares_the_data_and_only_the_first_writes(tmp_path):
    folder = make_image_folder(tmp_path / "images", train=32, test=16)
    probe = tmp_path / "probe"
    probe.mkdir()
    result = torchrun("7", "--epochs", 1, "--batch-size", 16, "--image-folder", folder, "--out", tmp_path / "run",
                      patch="probes", probe_dir=probe)
    assert result.returncode == 0, result.stderr
    decoded = [json.loads((probe / f"probes-rank{rank}").read_text()) for rank in (0, 1)]
    assert decoded[0]["decoded"] == 48 and decoded[1]["decoded"] == 0  # rank 1 found the cache rank 0 wrote
    assert {"config.json", "metrics.csv", "checkpoint.pt"} <= set(decoded[0]["written"])
    assert decoded[1]["written"] == []


def test_a_failure_preparing_the_data_is_reported_once_and_ends_every_process(tmp_path):
    folder = make_image_folder(tmp_path / "images", train=32, test=16)
    (next((folder / "train").iterdir()) / "broken.png").write_bytes(b"not a png")
    result = torchrun("7", "--epochs", 1, "--batch-size", 16, "--image-folder", folder, "--out", tmp_path / "run",
                      timeout=120)
    assert result.returncode != 0
    assert result.stderr.count("cannot be read as an image") == 1, result.stderr


def test_a_lost_peer_is_quiet_and_a_timeout_says_what_it_waited_for(monkeypatch):
    from runner import distributed

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    assert distributed.lost_peers(RuntimeError("Connection closed by peer [127.0.0.1]:4242")) == ""
    assert distributed.lost_peers(RuntimeError("Socket Timeout"), "preparing the data") == \
        "timed out waiting for the other processes at preparing the data"
    assert distributed.lost_peers(ValueError("not a collective")) is None


def test_restarted_processes_end_at_once_on_a_failure_left_in_out(tmp_path, monkeypatch):
    import argparse

    from runner import commands
    from runner import distributed
    from runner.errors import RunnerError

    for name, value in dict(RANK=0, WORLD_SIZE=2, TORCHELASTIC_MAX_RESTARTS=1, TORCHELASTIC_RESTART_COUNT=1).items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(distributed, "start", lambda device: pytest.fail("joined the processes again"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / records.FAILURE_MARKER).write_text("the data is damaged\n")
    args = argparse.Namespace(out=str(tmp_path / "out"), resume=None)
    with pytest.raises(RunnerError, match="the data is damaged"):
        commands.join_processes(None, args, torch.device("cpu"), True, {32}, False)


def test_a_failure_no_restart_can_fix_leaves_its_marker_and_one_a_restart_may_fix_does_not(tmp_path):
    from runner import commands
    from runner.errors import DataError, ProcessesLost

    for error, kept in ((DataError("bad data"), True), (ProcessesLost("lost"), False)):
        marker = tmp_path / type(error).__name__ / records.FAILURE_MARKER

        def work(progress, error=error, marker=marker):
            progress.marker = marker
            raise error

        assert commands.guarded(work) == 1
        assert marker.exists() is kept
