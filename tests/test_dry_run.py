"""--dry-run: the plan of a table, a sweep, an ablation and a results folder that holds finished, partial, claimed
and failed runs, printed without torch, without decoding an image, and without writing, launching, submitting,
claiming or waiting for anything; a usage error is still one (exit 2)."""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from configs import VERSIONS
from conftest import ROOT, make_mnist, read_metrics, run_cli
from runner import claims
from runner.records import CLAIM, RunFolder


def estimate(version: int, epochs: int) -> str:
    row = VERSIONS[version]
    return (f"~{max(1, round(row.epoch_seconds * epochs)):,} s, "
            f"~{row.tflop / row.recipe.epochs * epochs:,.3g} TFLOP")


def plan_rows(out: str) -> dict:
    """The plan's run lines: folder name -> the rest of its line (what it holds, its epochs, its estimate)."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("  "):
            name, rest = line.strip().split(" ", 1)
            rows[name] = " ".join(rest.split())
    return rows


def test_the_plan_of_a_table_names_every_run_with_its_epochs_and_time(cli, mnist_dir, tmp_path):
    code, out, err = cli("1-3", "--seeds", "0,1", "--epochs", 2, "--data-dir", mnist_dir, "--out", tmp_path / "t",
                         "--dry-run")
    assert code == 0, err
    assert plan_rows(out) == {f"v{version}-seed{seed}": f"new 2 epochs {estimate(version, 2)}"
                              for version in (1, 2, 3) for seed in (0, 1)}
    total = round(sum(VERSIONS[version].epoch_seconds * 2 * 2 for version in (1, 2, 3)))
    arithmetic = sum(VERSIONS[version].tflop / 25 * 2 * 2 for version in (1, 2, 3))
    assert f"Total: 6 run(s) (6 new); ~{total:,} s of training, ~{arithmetic:,.3g} TFLOP" in out
    assert f"Results folder: {tmp_path / 't'} (new)" in out
    assert f"Data: MNIST in {mnist_dir / 'MNIST' / 'raw'}" in out and "Data: Fashion-MNIST in" in out
    assert not (tmp_path / "t").exists()


def test_a_missing_dataset_device_or_slurm_is_a_line_of_the_plan(cli, tmp_path):
    code, out, err = cli("1,2", "--device", "cuda", "--slurm", "--data-dir", tmp_path / "none", "--dry-run")
    assert code == 0, err
    assert f"Data: MNIST is not in {tmp_path / 'none' / 'MNIST' / 'raw'}" in out
    assert "the command downloads it first" in out and "Device: cuda (not looked up" in out
    assert "Slurm: no Slurm here" in out and not (tmp_path / "none").exists() and not (tmp_path / "runs").exists()


def test_a_version_without_a_measured_time_is_estimated_unknown(cli, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(VERSIONS, 2, replace(VERSIONS[2], epoch_seconds=None))
    code, out, err = cli("1,2", "--epochs", 3, "--data-dir", mnist_dir, "--dry-run")
    assert code == 0, err
    assert plan_rows(out) == {"v1": f"new 3 epochs {estimate(1, 3)}",
                              "v2": f"new 3 epochs unknown, ~{VERSIONS[2].tflop / 25 * 3:.3g} TFLOP"}
    assert out.splitlines()[-2].endswith(", and 1 run(s) of unknown time")


def test_the_plan_of_a_sweep_names_each_arm_and_seed(cli, mnist_dir, tmp_path):
    code, out, err = cli("9", "--set", "lr=0.1,0.2", "--seeds", 0, "--epochs", 3, "--out", tmp_path / "s",
                         "--dry-run")
    assert code == 0, err
    assert plan_rows(out) == {f"v9-lr={lr}-seed0": f"new 3 epochs {estimate(9, 3)}" for lr in ("0.1", "0.2")}


def test_the_plan_of_an_ablation_lists_its_image_folder_and_every_arm(cli, image_folder, tmp_path):
    code, out, err = cli("ablate", "13", "--seeds", 3, "--amp", "--image-folder", image_folder, "--out",
                         tmp_path / "a", "--dry-run")
    assert code == 0, err
    arms = ["", "-without-whitening", "-without-translation-by-2", "-without-alternating-flips",
            "-without-lookahead", "-without-test-time-augmentation"]
    assert plan_rows(out) == {**{f"v13{arm}-seed3": f"new 10 epochs {estimate(13, 10)}" for arm in arms},
                              "v12-seed3": f"new 10 epochs {estimate(12, 10)}"}
    assert "10 classes, 60 training and 30 test images (listed, none decoded)" in out


@pytest.fixture(scope="module")
def shared_table(tmp_path_factory):
    """A results folder of version 1 (2 epochs) whose seed 0 finished (in a folder renamed since), seed 1 stopped
    after its first epoch, seed 2 failed, seed 3 is claimed by this process after its first epoch, and seed 4 by a
    process that has since died before its first epoch; the command that planned it asks seeds 0-5, so that seed 5
    is new. Trained once for this module's tests, which change nothing in it. Yields (the folder holding it all,
    the command's words, the live claim)."""
    root = tmp_path_factory.mktemp("shared")
    out = root / "t"
    argv = ["1", "--epochs", 2, "--batch-size", 50, "--data-dir", make_mnist(root / "data"), "--out", out,
            "--quiet"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root / "cache"))
        code, _, err = run_cli(*argv, "--seeds", "0-4")
    assert code == 0, err
    (out / "v1-seed0").rename(out / "renamed")
    for seed in (1, 3):
        folder = RunFolder(out / f"v1-seed{seed}")
        first = read_metrics(folder.path)[0]
        folder.write_metrics([{name: float(value) if value else None for name, value in first.items()}])
    (out / "v1-seed4" / "metrics.csv").unlink()
    RunFolder(out / "v1-seed2").record_failure("diverged at epoch 2 (loss nan)")
    dead = ("import sys, pathlib; sys.path.insert(0, {root!r}); from runner import claims; "
            "claims.Watcher().take(pathlib.Path({folder!r})); import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", dead.format(root=str(ROOT), folder=str(out / "v1-seed4"))], check=True,
                   timeout=60)
    live = claims.Watcher().take(out / "v1-seed3")
    try:
        yield root, [*argv, "--seeds", "0-5"], live
    finally:
        live.release()


@pytest.mark.slow
def test_the_plan_says_what_each_run_folder_holds(cli, shared_table):
    _, argv, live = shared_table
    code, out, err = cli(*argv, "--dry-run")
    assert code == 0, err
    owner = claims.owner_text(claims.read_claim(live.folder))
    dead = claims.owner_text(claims.read_claim(Path(argv[argv.index("--out") + 1]) / "v1-seed4"))
    assert plan_rows(out) == {
        "renamed": "finished 2 epochs 0 s",
        "v1-seed1": f"partial at epoch 1 2 epochs (1 left) {estimate(1, 1)}",
        "v1-seed2": "failed (diverged at epoch 2 (loss nan)); skipped 2 epochs 0 s",
        "v1-seed3": f"partial at epoch 1, claimed by {owner} 2 epochs (1 left) {estimate(1, 1)}",
        "v1-seed4": f"claimed by {dead}, its process gone: taken over at once 2 epochs {estimate(1, 2)}",
        "v1-seed5": f"new 2 epochs {estimate(1, 2)}"}
    assert f"pid {os.getpid()}" in owner
    assert "Total: 6 run(s) (1 finished, 1 partial, 2 claimed, 1 failed, 1 new)" in out
    code, out, err = cli(*argv, "--dry-run", "--force", "--retry-failed")
    assert code == 0, err
    rows = plan_rows(out)
    assert rows["renamed"] == f"finished; --force starts it over 2 epochs {estimate(1, 2)}"
    assert rows["v1-seed3"].endswith(f"--force waits for its owner, then starts it over 2 epochs {estimate(1, 2)}")
    code, out, err = cli(*argv, "--lr", 0.5, "--dry-run")  # the folders named for its runs hold others
    assert code == 0, err
    assert plan_rows(out)["v1-seed1"] == "holds another run (lr=0.01, this command asks 0.5): the command refuses " \
        "it (--force starts it over) 2 epochs 0 s"
    assert "as it stands the command refuses to start" in out
    renamed = Path(argv[argv.index("--out") + 1]) / "renamed"
    code, out, err = cli("1", "--epochs", 2, "--out", renamed, "--dry-run")  # one run, into a run's folder
    assert code == 0, err
    assert plan_rows(out) == {"renamed": f"finished: the command refuses it (continue it with --resume {renamed}, "
                                         "or add --force to start over) 2 epochs 0 s"}


SNAPSHOT_PROBE = """
import sys
sys.path.insert(0, {root!r})
import main
code = main.main(sys.argv[1:])
print("imported:", sorted(name for name in ("torch", "data", "runner.images", "runner.distributed", "train")
                          if name in sys.modules))
sys.exit(code)
"""


def snapshot(root: Path) -> dict:
    """Every file and folder under root with its modification time; heartbeat files by name alone, as the live
    claim's owner (this test's process) keeps beating in its own."""
    return {str(path.relative_to(root)): None if path.name.startswith(f"{CLAIM}.beat.") else path.stat().st_mtime_ns
            for path in root.rglob("*")}


def test_a_dry_run_imports_no_torch_writes_nothing_and_launches_submits_or_waits_for_nothing(shared_table):
    tmp_path, argv, live = shared_table
    before = snapshot(tmp_path)
    words = [str(word) for word in argv] + ["--dry-run", "--force", "--procs", "2", "--slurm", "--slurm-executor",
                                            "local"]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    probe = subprocess.run([sys.executable, "-c", SNAPSHOT_PROBE.format(root=str(ROOT)), *words], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert "imported: []" in probe.stdout, probe.stdout
    assert "Slurm: a job array of 6 task(s) on submitit's local executor, on this machine: none submitted" in \
        probe.stdout
    assert snapshot(tmp_path) == before
    assert claims.read_claim(live.folder)["token"] == live.record["token"]  # --force neither waited for it nor took it
    one = subprocess.run([sys.executable, "-c", SNAPSHOT_PROBE.format(root=str(ROOT)), "1", "--epochs", "1",
                          "--procs", "2", "--dry-run", "--out", str(tmp_path / "one")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert one.returncode == 0, one.stderr
    assert "Processes: 2 on this machine, through torchrun's launcher: none started" in one.stdout
    assert "imported: []" in one.stdout and snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, message", [
    (["9", "--seed", "1", "--seeds", "0,1"], "give --seed or --seeds, not both"),
    (["1", "--procs", "3"], "--batch-size 64 does not divide among 3 processes"),
    (["--resume", "."], "--dry-run plans the runs of VERSIONS or ablate V, not --resume"),
    (["ablate", "13", "--slurm"], "--slurm: version 12 trains in bfloat16 autocast"),
])
def test_a_usage_error_is_still_one(cli, argv, message):
    code, out, err = cli(*argv, "--dry-run")
    assert code == 2 and message in err and out == "", (out, err)
