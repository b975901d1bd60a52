"""The edges of sharing runs: copies that start at the same instant, a crash at the worst moment, a --resume of a
claimed run, a damaged checkpoint in a table, copies with other leases, a file system without hard links, and the
takeover races of the claim protocol, each reproduced in-process where it can be."""
import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest

from runner import claims
from runner import results
from runner.records import CLAIM, RunFolder


def dead_owner_claim(folder: Path, **changes) -> dict:
    """A claim as a process of this machine that has since died leaves it."""
    boot, namespace = claims.this_machine()
    record = dict(token="0" * 32, host="here", pid=2 ** 22 + 12345, boot=boot, pidns=namespace, lease=600, **changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CLAIM).write_text(json.dumps(record))
    return record


def table(mnist_dir, out, *more):
    return ["1", "--seeds", "0,1", "--epochs", 1, "--batch-size", 50, "--data-dir", mnist_dir, "--out", out, "--quiet",
            *more]


@pytest.mark.parametrize("left", [[".config.json.k2j3.tmp"], [CLAIM], [CLAIM, f"{CLAIM}.beat.{'a' * 32}"], []])
def test_a_run_folder_being_set_up_or_left_by_a_crash_is_this_tools(tmp_path, left):
    """A copy that lists the folder while another makes a run folder (or after one died doing so) accepts it."""
    run = tmp_path / "t" / "v1-seed0"
    run.mkdir(parents=True)
    for name in left:
        (run / name).write_text("{}")
    results.prepare_results_folder(tmp_path / "t")
    assert RunFolder(run).is_unstarted()


def test_a_users_file_among_them_is_still_refused(tmp_path):
    run = tmp_path / "t" / "v1-seed0"
    run.mkdir(parents=True)
    (run / CLAIM).write_text("{}")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(results.RunnerError, match="not a results folder"):
        results.prepare_results_folder(tmp_path / "t")


def test_resume_of_a_run_a_live_copy_trains_is_refused_naming_it(cli, mnist_dir, tmp_path):
    out = tmp_path / "t"
    assert cli(*table(mnist_dir, out))[0] == 0
    owner = claims.Watcher().take(out / "v1-seed0")
    try:
        code, _, err = cli("--resume", out / "v1-seed0", "--epochs", 2, "--quiet")
    finally:
        owner.release()
    assert code == 1 and "is being trained by" in err and f"pid {os.getpid()}" in err, err
    assert len(err.strip().splitlines()) == 1
    assert len(RunFolder(out / "v1-seed0").load_checkpoint()["metrics"]) == 1  # not trained


@pytest.mark.slow
def test_resume_takes_over_at_once_a_claim_whose_process_is_gone(cli, mnist_dir, tmp_path):
    out = tmp_path / "t"
    assert cli(*table(mnist_dir, out))[0] == 0
    dead_owner_claim(out / "v1-seed0")
    started = time.monotonic()
    code, _, err = cli("--resume", out / "v1-seed0", "--epochs", 2, "--quiet")
    assert code == 0, err
    assert time.monotonic() - started < 60  # not the claim's 600 s lease
    assert len(RunFolder(out / "v1-seed0").load_checkpoint()["metrics"]) == 2
    assert claims.read_claim(out / "v1-seed0") is None


@pytest.mark.slow
@pytest.mark.parametrize("damaged", [0, 1])  # seed 1's is met first by the table written after seed 0 trained
def test_a_damaged_checkpoint_fails_its_run_alone_and_retry_failed_trains_it_anew(cli, mnist_dir, tmp_path, damaged):
    out = tmp_path / "t"
    assert cli(*table(mnist_dir, out))[0] == 0
    (out / f"v1-seed{damaged}" / "checkpoint.pt").write_bytes(b"cut short")
    code, stdout, err = cli(*table(mnist_dir, out)[:-1], "--epochs", 2, "--quiet")
    assert code == 1 and "lack runs" in err and "--force" not in err, err
    assert "--retry-failed" in (out / f"v1-seed{damaged}" / "failed.txt").read_text()
    assert len(RunFolder(out / f"v1-seed{1 - damaged}").load_checkpoint()["metrics"]) == 2  # the other run went on
    code, stdout, err = cli(*table(mnist_dir, out)[:-1], "--epochs", 2, "--quiet", "--retry-failed")
    assert code == 0, err
    assert f"Version 1, seed {damaged}: MNIST, MLP (new)" in stdout
    assert len(RunFolder(out / f"v1-seed{damaged}").load_checkpoint()["metrics"]) == 2


def test_a_short_lease_never_takes_a_claim_that_beats_within_its_own_lease(tmp_path):
    owner = claims.Watcher(lease=6).take(tmp_path)  # beats every second
    try:
        hasty = claims.Watcher(lease=0.3)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert hasty.take(tmp_path) is None
            time.sleep(0.05)
        owner.check()
    finally:
        owner.release()


def test_a_claim_carries_its_lease_and_is_judged_by_it(tmp_path):
    owner = claims.Watcher(lease=0.3).take(tmp_path)
    assert claims.read_claim(tmp_path)["lease"] == 0.3
    owner.stopped.set()  # the owner hangs: its heartbeat stands still
    owner.thread.join()
    patient = claims.Watcher(lease=600)
    assert patient.take(tmp_path) is None
    time.sleep(0.4)
    taker = patient.take(tmp_path)  # after the claim's own lease, not the watcher's
    assert taker is not None
    taker.release()


def test_a_claim_whose_process_is_gone_is_taken_at_once_and_only_on_the_same_boot_and_namespace(tmp_path):
    dead_owner_claim(tmp_path / "a")
    taker = claims.Watcher().take(tmp_path / "a")
    assert taker is not None and claims.read_claim(tmp_path / "a")["token"] == taker.record["token"]
    taker.release()
    for other in (dict(boot="another boot"), dict(pidns="pid:[1]")):
        folder = tmp_path / next(iter(other.values())).replace(" ", "-").replace(":", "")
        record = dead_owner_claim(folder)
        (folder / CLAIM).write_text(json.dumps({**record, **other}))
        assert claims.Watcher().take(folder) is None  # another machine or container: wait its lease


def test_fail_fast_with_retry_failed_retries_and_a_plain_copy_leaves_the_mark(cli, mnist_dir, tmp_path):
    out = tmp_path / "t"
    sweep = ["1", "--epochs", 1, "--batch-size", 50, "--data-dir", mnist_dir, "--out", out, "--set",
             "lr=1e3,0.05", "--quiet"]
    code, _, err = cli(*sweep, "--fail-fast")
    assert code == 1 and (out / ".fail-fast").exists()
    code, stdout, err = cli(*sweep)
    assert code == 1 and "failed earlier" in stdout
    assert (out / ".fail-fast").exists()  # a copy without --fail-fast leaves it to those started with it
    code, stdout, err = cli(*sweep, "--fail-fast", "--retry-failed")
    assert code == 1 and "Version 1 (lr=1000.0), seed 0: MNIST, MLP (new)" in stdout, stdout + err
    assert "uniform guess" in err and "every copy stops" not in err  # trained again, and failed again


def test_an_owner_stalled_between_its_check_and_its_beat_never_overwrites_a_takers_claim(tmp_path):
    owner = claims.Watcher(lease=0.6).take(tmp_path)
    resume = threading.Event()
    checked = threading.Event()

    def stalled_holds():
        checked.set()
        resume.wait()
        return True

    owner.holds = stalled_holds  # its next beat checks, then stalls before it writes
    checked.wait(5)
    taker_watcher = claims.Watcher(lease=0.6)
    deadline, taker = time.monotonic() + 5, None
    while taker is None and time.monotonic() < deadline:
        taker = taker_watcher.take(tmp_path)
        time.sleep(0.05)
    assert taker is not None
    resume.set()  # the owner wakes and beats
    time.sleep(0.3)
    assert claims.read_claim(tmp_path)["token"] == taker.record["token"]
    taker.check()
    taker.release()
    owner.stopped.set()


def test_a_link_that_succeeded_but_answered_exists_is_a_claim(tmp_path, monkeypatch):
    link = os.link

    def retransmitted(source, target):  # NFS: the reply to the first try was lost, the retry finds the name
        link(source, target)
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(os, "link", retransmitted)
    claim = claims.Watcher().take(tmp_path)
    assert claim is not None and claims.read_claim(tmp_path)["token"] == claim.record["token"]
    monkeypatch.setattr(os, "link", link)
    claim.release()


def test_links_refused_with_no_claim_to_show_back_off(tmp_path, monkeypatch):
    tries = []

    def refused(source, target):
        tries.append(1)
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(os, "link", refused)
    watcher = claims.Watcher(lease=10)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert watcher.take(tmp_path) is None
    assert len(tries) < 40


def test_a_file_system_without_hard_links_is_one_line_saying_so(cli, mnist_dir, tmp_path, monkeypatch):
    def unsupported(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", unsupported)
    code, _, err = cli(*table(mnist_dir, tmp_path / "t"))
    assert code == 1 and "hard links" in err and "one copy" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_a_run_folder_keeps_its_config_while_it_is_cleared(cli, mnist_dir, tmp_path, monkeypatch):
    """A new run's folder is cleared before it trains, and --force clears every run: config.json stays meanwhile,
    so `status` and the other copies see the whole table (a copy killed there leaves it whole too)."""
    from runner.status import status_lines

    out, seen, clear = tmp_path / "t", [], RunFolder.clear

    def clear_and_look(folder, *args, **kwargs):
        clear(folder, *args, **kwargs)
        results.prepare_results_folder(out)
        seen.append(status_lines(out)[-1])

    monkeypatch.setattr(RunFolder, "clear", clear_and_look)
    assert cli(*table(mnist_dir, out))[0] == 0
    code, _, err = cli(*table(mnist_dir, out), "--force")
    assert code == 0, err
    assert len(seen) == 6 and all(line.startswith("2 runs:") for line in seen), seen


@pytest.mark.slow
def test_force_waits_for_a_damaged_claim_no_longer_than_its_own_lease(cli, mnist_dir, tmp_path):
    out = tmp_path / "t"
    assert cli(*table(mnist_dir, out))[0] == 0
    (out / "v1-seed0" / CLAIM).write_bytes(b"\0damaged\n")
    owner = claims.Watcher(lease=1).take(out / "v1-seed1")
    started = time.monotonic()
    try:
        code, _, err = cli(*table(mnist_dir, out), "--force", "--lease", 1)
    finally:
        owner.release()
    assert code == 1 and "--force" in err and f"pid {os.getpid()}" in err, err
    assert time.monotonic() - started < 30  # not the default lease of 180 s


def test_clearing_a_run_folder_leaves_another_copys_config_write_in_flight(tmp_path):
    """A copy placing the table's runs writes config.json through a temporary file while the claimant clears."""
    folder = RunFolder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / ".config.json.k2j3.tmp").write_text("{}")
    (tmp_path / ".checkpoint.pt.x1.tmp").write_text("")
    folder.clear(keep_config=True)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [".config.json.k2j3.tmp", "config.json"]


def test_resume_takes_lease_for_the_claim_it_keeps(cli, mnist_dir, tmp_path, monkeypatch):
    out = tmp_path / "t"
    assert cli(*table(mnist_dir, out))[0] == 0
    leases = []
    take = claims.Watcher.take
    monkeypatch.setattr(claims.Watcher, "take", lambda self, folder: (leases.append(self.lease), take(self, folder))[1])
    code, _, err = cli("--resume", out / "v1-seed0", "--epochs", 2, "--quiet", "--lease", 30)
    assert code == 0, err
    assert leases == [30.0]


@pytest.mark.parametrize("moment", ["before", "during"])
def test_a_copy_taken_over_as_it_draws_its_curves_leaves_the_run_to_the_taker(cli, mnist_dir, tmp_path, monkeypatch,
                                                                               moment):
    """Another copy takes the run over (this one's heartbeat had stood still) just before the curves are drawn, or
    clears the folder while they are written: this copy says it lost the run, draws nothing into it and goes on
    (here it takes the run back once the taker's lease lapses), instead of ending with a disk error."""
    import train

    real_draw, taken = train.draw_curves, []

    def taken_over_then_draw(folder, run, metrics):
        if not taken:
            taken.append(claims.Claim(folder.path, 0.5))
            taken[0].replace()  # the taker's claim in this copy's place; it never beats, so it lapses
            if moment == "during":
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(folder.path / ".curves.tmp"))
        real_draw(folder, run, metrics)

    monkeypatch.setattr(train, "draw_curves", taken_over_then_draw)
    out = tmp_path / "t"
    code, stdout, err = cli("1", "--seeds", "0,1", "--epochs", 1, "--data-dir", mnist_dir, "--out", out, "--lease", 1)
    assert code == 0 and "free space" not in err, err
    assert stdout.count("was taken over by") == 1, stdout
    assert len(RunFolder(out / "v1-seed0").load_checkpoint()["metrics"]) == 1


def test_a_results_folder_another_copy_makes_between_the_look_and_the_mkdir_is_shared(tmp_path, monkeypatch):
    out, real_exists = tmp_path / "t", Path.exists

    def made_meanwhile(path):  # the other copy, started at the same instant, makes it just after this one looked
        there = real_exists(path)
        if path == out and not there:
            out.mkdir()
        return there

    monkeypatch.setattr(Path, "exists", made_meanwhile)
    results.prepare_results_folder(out)
    assert out.is_dir()
