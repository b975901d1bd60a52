"""Copies of one table's command on one results folder: each run trained once, a dead copy's run taken over after
the lease, a stopped copy's claim released at once, conflicting copies refused, failures kept per run, and the
Slurm array through submitit's local executor. Copies are real processes (tests/patched_main.py with PATCH=epochs
records every epoch each process finishes)."""
import collections
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import claims
from runner.records import CLAIM, RunFolder
import forked
from conftest import ROOT, make_mnist, read_metrics

pytestmark = pytest.mark.slow  # real processes, or a long search

PATCHED = str(ROOT / "tests" / "patched_main.py")


def start_copy(*argv, probe: Path, delay: float = 0.0) -> forked.Forked:
    environment = dict(os.environ, PATCH="epochs", PROBE_DIR=str(probe), STEP_DELAY=str(delay), PYTHONUNBUFFERED="1")
    return forked.start([sys.executable, PATCHED, *map(str, argv), "--quiet", "--threads", "1"], env=environment)


def finish(copy: forked.Forked, timeout: float = 120) -> tuple[int, str, str]:
    out, err = copy.communicate(timeout=timeout)
    return copy.returncode, out, err


def epochs_trained(probe: Path) -> collections.Counter:
    """How many times each (run folder, epoch) was trained to its end, over every process."""
    return collections.Counter(tuple(line.split()) for path in probe.glob("epochs-*")
                               for line in path.read_text().splitlines())


def wait_for(condition, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def data(tmp_path):
    return make_mnist(tmp_path / "data")


def table(data, out, *more):
    return ["1", "--seeds", "0-2", "--epochs", 2, "--batch-size", 50, "--data-dir", data, "--out", out, *more]


def test_a_claim_is_exclusive_and_a_dead_owners_is_taken_over_after_the_lease(tmp_path):
    first, second = claims.Watcher(lease=0.5), claims.Watcher(lease=0.5)
    owner = first.take(tmp_path)
    assert owner and second.take(tmp_path) is None
    owner.stopped.set()  # the owner dies: its heartbeat stands still
    owner.thread.join()
    assert second.take(tmp_path) is None  # not yet a lease of silence on the second's clock
    time.sleep(0.6)
    taker = second.take(tmp_path)
    assert taker and claims.read_claim(tmp_path)["token"] == taker.record["token"]
    folder = RunFolder(tmp_path)
    folder.guard = owner.check  # as run_table sets it: the old owner may no longer write a checkpoint
    with pytest.raises(claims.ClaimLost):
        folder.save_checkpoint({})
    assert not folder.has_checkpoint()
    taker.release()
    assert claims.read_claim(tmp_path) is None


def test_a_beating_claim_is_never_taken_over(tmp_path):
    owner = claims.Watcher(lease=0.3).take(tmp_path)
    watcher = claims.Watcher(lease=0.3)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert watcher.take(tmp_path) is None
        time.sleep(0.05)
    assert claims.read_claim(tmp_path)["beat"] >= 3
    owner.check()
    owner.release()


def test_a_reader_never_sees_a_heartbeat_half_written(tmp_path):
    owner = claims.Watcher(lease=0.006).take(tmp_path)  # a beat every millisecond
    token = owner.record["token"]
    reads = [claims.read_beat(tmp_path, token) for _ in range(20000)]
    owner.release()
    assert owner.beats > 50 and None not in reads


def test_two_copies_started_at_once_train_every_epoch_of_every_run_once(tmp_path, data):
    probe = tmp_path / "probe"
    probe.mkdir()
    copies = [start_copy(*table(data, tmp_path / "t"), probe=probe, delay=0.02) for _ in range(2)]
    results = [finish(copy) for copy in copies]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    trained = epochs_trained(probe)
    assert trained == {(f"v1-seed{seed}", str(epoch)): 1 for seed in range(3) for epoch in (1, 2)}
    assert len(list(probe.glob("epochs-*"))) == 2  # both copies trained
    assert all("| 1 | mnist |" in out for _, out, _ in results)  # each found no live claim left: the whole table
    assert not list((tmp_path / "t").glob(f"*/{CLAIM}*"))


def test_a_killed_copys_run_is_taken_over_at_once_on_its_machine(tmp_path, data):
    probe, out = tmp_path / "probe", tmp_path / "t"
    probe.mkdir()
    victim = start_copy(*table(data, out, "--lease", 600), probe=probe, delay=0.1)
    wait_for(lambda: (out / "v1-seed0" / "metrics.csv").exists(), what="the first epoch")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert claims.read_claim(out / "v1-seed0")  # left behind by the dead copy
    status = subprocess.run([sys.executable, str(ROOT / "main.py"), "status", out], capture_output=True, text=True)
    assert "running   v1-seed0  1/2 epochs  on" in status.stdout and "takes the run over at once" in status.stdout
    code, stdout, err = finish(start_copy(*table(data, out, "--lease", 600), probe=probe))  # well within the lease
    assert code == 0, err
    assert "Version 1, seed 0" in stdout and "resuming after epoch 1" in stdout
    assert epochs_trained(probe) == {(f"v1-seed{seed}", str(epoch)): 1 for seed in range(3) for epoch in (1, 2)}
    assert [row["epoch"] for row in read_metrics(out / "v1-seed0")] == ["1", "2"]


def test_ctrl_c_releases_the_claim_at_once_and_a_copy_left_with_live_claims_exits_3(tmp_path, data):
    probe, out = tmp_path / "probe", tmp_path / "t"
    probe.mkdir()
    slow = start_copy("1", "--seeds", "0", "--epochs", 3, "--batch-size", 50, "--data-dir", data, "--out", out,
                      "--lease", 2, probe=probe, delay=2.0)
    wait_for(lambda: claims.read_claim(out / "v1-seed0"), what="the claim")
    code, stdout, err = finish(start_copy("1", "--seeds", "0", "--epochs", 3, "--batch-size", 50, "--data-dir", data,
                                          "--out", out, "--lease", 2, probe=probe))
    assert code == 3 and "still trained by other copies" in err and "error" not in err, err
    slow.send_signal(signal.SIGINT)
    code, _, err = finish(slow)
    assert code == 130 and "Continue with" in err
    assert claims.read_claim(out / "v1-seed0") is None


def snapshot(folder: Path) -> dict:
    return {str(path): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def test_a_conflicting_copy_is_refused_unchanged_and_a_grown_grid_adds_its_arms(cli, tmp_path, data):
    out, probe = tmp_path / "t", tmp_path / "probe"
    probe.mkdir()
    sweep = ["1", "--epochs", 1, "--batch-size", 50, "--data-dir", data, "--out", out, "--quiet"]
    assert cli(*sweep, "--set", "lr=0.05,0.1")[0] == 0
    before = snapshot(out)
    code, _, err = finish(start_copy(*sweep, "--set", "lr=0.05,0.1", "--deterministic", probe=probe))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "was trained with deterministic=False" in err
    assert snapshot(out) == before
    code, stdout, err = cli(*sweep, "--set", "lr=0.05,0.1,0.2")
    assert code == 0, err
    assert stdout.count("Training...") == 1 and "Version 1 (lr=0.2), seed 0: MNIST, MLP (new)" in stdout


def test_a_run_failed_for_good_is_not_retried_and_fail_fast_stops_every_copy_started_with_it(cli, tmp_path, data):
    out, probe = tmp_path / "t", tmp_path / "probe"
    probe.mkdir()
    sweep = ["1", "--epochs", 1, "--batch-size", 50, "--data-dir", data, "--out", out, "--set", "lr=1e3,0.05,0.1"]
    code, _, err = cli(*sweep, "--fail-fast", "--quiet")
    assert code == 1 and "uniform guess" in err
    assert (out / "v1-lr=1000.0" / "failed.txt").exists() and (out / ".fail-fast").exists()
    code, _, err = finish(start_copy(*sweep, "--fail-fast", probe=probe))
    assert code == 1 and "every copy stops" in err and len(err.strip().splitlines()) == 1
    assert set(epochs_trained(probe)) == set()  # nothing was trained
    code, stdout, err = finish(start_copy(*sweep, probe=probe))
    assert code == 1 and "failed earlier" in stdout and "lack runs" in err
    assert set(epochs_trained(probe)) == {("v1-lr=0.05", "1"), ("v1-lr=0.1", "1")}  # the failed one not again
    code, stdout, _ = cli(*sweep, "--retry-failed", "--quiet")
    assert code == 1 and "Version 1 (lr=1000.0), seed 0 failed" in stdout


def test_a_stale_claim_on_a_finished_run_is_ignored_and_force_is_refused_while_a_claim_beats(cli, tmp_path, data):
    out, probe = tmp_path / "t", tmp_path / "probe"
    probe.mkdir()
    assert cli(*table(data, out), "--quiet")[0] == 0
    (out / "v1-seed1" / CLAIM).write_text(json.dumps({"token": "gone", "host": "elsewhere", "pid": 1, "beat": 7}))
    started = time.monotonic()
    code, stdout, err = finish(start_copy(*table(data, out, "--lease", 600), probe=probe))
    assert code == 0 and "Version 1, seed 1: finished (2 epochs)" in stdout, err
    assert time.monotonic() - started < 60  # not a lease
    (out / "v1-seed1" / CLAIM).unlink()
    owner = claims.Watcher(lease=1).take(out / "v1-seed2")
    try:
        before = snapshot(out)
        code, _, err = finish(start_copy(*table(data, out, "--force", "--lease", 1), probe=probe))
    finally:
        owner.release()
    assert code == 1 and "--force" in err and f"pid {os.getpid()}" in err and "nothing was changed" in err
    assert {path: stamp for path, stamp in snapshot(out).items() if CLAIM not in path} == \
        {path: stamp for path, stamp in before.items() if CLAIM not in path}


def submit_locally(tmp_path, probe: Path, *argv, tasks: int, delay: float) -> subprocess.CompletedProcess:
    """Submit the command as a Slurm array of `tasks` tasks on submitit's local executor; every task puts the epochs
    probe in place as Python starts (PATCH=epochs, each step sleeping `delay` seconds)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import os, sys\nif 'SUBMITIT_LOCAL_GLOBALID' in os.environ:\n"
                                           f"    sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
                                           "    import patches\n    patches.apply('epochs')\n")
    environment = dict(os.environ, PROBE_DIR=str(probe), STEP_DELAY=str(delay), PYTHONPATH=str(site))
    with open(tmp_path / "submit.out", "w") as said:  # a file, not a pipe: the tasks' processes inherit it
        return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, argv), "--quiet", "--threads", "1",
                               "--slurm", "--slurm-executor", "local", "--slurm-tasks", str(tasks)],
                              env=environment, stdout=said, stderr=subprocess.STDOUT, timeout=60)


def test_a_slurm_array_on_the_local_executor_shares_the_runs_and_a_requeued_task_continues(tmp_path, data):
    pytest.importorskip("submitit")
    out, probe = tmp_path / "t", tmp_path / "probe"
    probe.mkdir()
    submitted = submit_locally(tmp_path, probe, *table(data, out), tasks=2, delay=0.3)
    assert submitted.returncode == 0 and "Submitted 2 array task(s)" in (tmp_path / "submit.out").read_text()
    record = wait_for(lambda: claims.read_claim(out / "v1-seed0"), what="a task's claim")
    os.kill(record["pid"], signal.SIGUSR2)  # what Slurm sends before preempting or timing out a task
    try:
        wait_for(lambda: sum(epochs_trained(probe).values()) >= 6, 180, "every epoch")
        wait_for(lambda: (out / "results.md").exists() and "| 1 | mnist |" in (out / "results.md").read_text(), 60,
                 "the results")
    finally:
        for path in (out / ".slurm").rglob("*_log.out"):
            print(path.read_text())
    logs = "".join(path.read_text() for path in (out / ".slurm").rglob("*_log.*"))
    assert "preempted or timed out; its claim is released, requeueing" in logs
    assert "resuming after epoch" in logs or "(new)" in logs
    assert epochs_trained(probe) == {(f"v1-seed{seed}", str(epoch)): 1 for seed in range(3) for epoch in (1, 2)}
    status = subprocess.run([sys.executable, str(ROOT / "main.py"), "status", out], capture_output=True, text=True)
    assert "3 runs: 3 finished, 0 running, 0 failed, 0 waiting" in status.stdout
    assert f"Slurm tasks' logs: {out / '.slurm'}" in status.stdout


def test_slurm_force_starts_a_finished_table_over_once_before_its_tasks_each_train_runs_once(cli, tmp_path, data):
    """--force belongs to the submitting command: it clears the table once; a task given it too would wipe the runs
    other tasks had finished, or meet their live claims and fail."""
    pytest.importorskip("submitit")
    out, probe = tmp_path / "t", tmp_path / "probe"
    probe.mkdir()
    four = ["1", "--seeds", "0-3", "--epochs", 2, "--batch-size", 50, "--data-dir", data, "--out", out]
    assert cli(*four, "--quiet")[0] == 0
    submitted = submit_locally(tmp_path, probe, *four, "--force", "--lease", 2, tasks=3, delay=0.3)
    said = (tmp_path / "submit.out").read_text()
    assert submitted.returncode == 0 and "Submitted 3 array task(s)" in said, said
    assert not any((out / f"v1-seed{seed}" / "checkpoint.pt").exists() for seed in range(4))  # cleared at once
    results = wait_for(lambda: [path for path in (out / ".slurm").rglob("*_result.pkl")] if len(
        list((out / ".slurm").rglob("*_result.pkl"))) == 3 else None, 240, "the three tasks' ends")
    logs = "".join(path.read_text() for path in (out / ".slurm").rglob("*_log.*"))
    assert all(pickle.loads(path.read_bytes())[0] == "success" for path in results), logs
    assert epochs_trained(probe) == {(f"v1-seed{seed}", str(epoch)): 1 for seed in range(4) for epoch in (1, 2)}
    status = subprocess.run([sys.executable, str(ROOT / "main.py"), "status", out], capture_output=True, text=True)
    assert "4 runs: 4 finished, 0 running, 0 failed, 0 waiting" in status.stdout


def test_slurm_without_slurm_is_one_line_and_makes_nothing(cli, tmp_path, data, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no srun on it
    code, _, err = cli(*table(data, tmp_path / "t"), "--slurm")
    assert code == 1 and err.strip().splitlines() == [err.strip()] and "no Slurm here" in err
    assert not (tmp_path / "t").exists() and not (tmp_path / "runs").exists()
    code, _, err = cli("1", "--data-dir", data, "--slurm")
    assert code == 2 and "--slurm submits several runs" in err


def test_slurm_asks_for_amp_or_no_amp_where_the_tasks_devices_would_choose_it(cli, tmp_path):
    """The submitting command places the runs, fixed for their life, and cannot see the tasks' devices."""
    code, _, err = cli("ablate", "13", "--seeds", "0,1", "--out", tmp_path / "t", "--slurm")
    assert code == 2 and "--slurm: version 12 trains in bfloat16 autocast" in err.strip().splitlines()[-1]
    assert not (tmp_path / "t").exists()


def test_an_unreadable_claim_lapses_after_the_readers_lease(tmp_path):
    """A claim overwritten with garbage names no lease: the reader's own (--lease) judges it, not the default."""
    (tmp_path / CLAIM).write_bytes(b"\0damaged\n")
    watcher = claims.Watcher(lease=0.3)
    assert watcher.take(tmp_path) is None
    time.sleep(0.4)
    taker = watcher.take(tmp_path)
    assert taker is not None and claims.read_claim(tmp_path)["token"] == taker.record["token"]
    taker.release()
