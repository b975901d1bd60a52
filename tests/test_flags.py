"""The manual (docs/running.md) documents every flag the parser has, and every documented flag that can run on a
CPU runs to success; where success alone would not show the flag at work, a probe checks its effect."""
import io
import json
import re
import subprocess
import sys
import types

import pytest
import torch

from runner import console
from runner import train_command
import train
from conftest import ROOT, make_image_folder, make_mnist, read_metrics, watch_output_dtypes

CUDA_ONLY = {"--sync-bn"}
SLURM = {"--slurm", "--slurm-partition", "--slurm-gpus", "--slurm-cpus", "--slurm-time", "--slurm-tasks",
         "--slurm-array-parallelism", "--slurm-executor"}  # tested through submitit's local executor (test_claims)


def documented_flags() -> set:
    text = (ROOT / "docs" / "running.md").read_text()
    options = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    return {flag for line in options.splitlines() if line.startswith("| `")
            for flag in re.findall(r"--[a-z][a-z-]*", line.split("|")[1])}


def parser_flags() -> set:
    """The flags of the training parser and of ablate's."""
    return {option for ablate in (False, True) for action in train_command.build_parser(ablate)._actions
            for option in action.option_strings} - {"-h", "--help"}


def test_the_manual_documents_every_flag_and_no_other():
    assert documented_flags() == parser_flags()


@pytest.fixture
def data(tmp_path):
    make_mnist(tmp_path / "data", "FashionMNIST")
    return make_mnist(tmp_path / "data")


def flag_runs(tmp_path, data) -> dict:
    """For each flag: the arguments of one short run that uses it (VERSION first)."""
    folder = make_image_folder(tmp_path / "images", size=36, train=40, test=20)
    base = ["1", "--epochs", "1", "--data-dir", data, "--quiet"]
    ladder_file = tmp_path / "my_ladder.py"
    ladder_file.write_text("from ladder import rung\nrung(1, 'mnist', {'wide': {'model.hidden': 20}})\n")
    return {
        "--epochs": base,
        "--batch-size": base + ["--batch-size", "50"],
        "--lr": base + ["--lr", "0.05"],
        "--seed": base + ["--seed", "7"],
        "--seeds": base + ["--seeds", "0,1"],
        "--holdout": base + ["--holdout", "20"],
        "--holdout-seed": base + ["--holdout", "20", "--holdout-seed", "3"],
        "--device": base + ["--device", "cpu"],
        "--data-dir": base,
        "--image-folder": ["6", "--epochs", "1", "--image-folder", folder, "--resize", "--quiet"],
        "--resize": ["1", "--epochs", "1", "--image-folder", folder, "--resize", "--quiet"],
        "--cache-dir": base + ["--cache-dir", tmp_path / "cache"],
        "--loader": base + ["--loader", "torchvision"],
        "--eval-every": base + ["--eval-every", "2"],
        "--amp": base + ["--amp", "--device", "cpu"],
        "--no-amp": ["12", "--epochs", "1", "--batch-size", "16", "--image-folder", folder, "--resize", "--no-amp",
                     "--quiet"],
        "--compile": base + ["--compile", "--device", "cpu"],
        "--deterministic": base + ["--deterministic"],
        "--threads": base + ["--threads", "2"],
        "--procs": base + ["--procs", "2", "--device", "cpu", "--threads", "2"],
        "--quiet": base,
        "--out": base,
        "--force": base + ["--force"],
        "--set": base + ["--set", "weight_decay=1e-3", "--set", "model.hidden=50"],
        "--fail-fast": base + ["--set", "lr=0.05,0.1", "--fail-fast"],
        "--retry-failed": base + ["--seeds", "0", "--retry-failed"],
        "--lease": base + ["--seeds", "0,1", "--lease", "30"],
        "--add": ["ablate", "3", "--add", "--epochs", "1", "--data-dir", data, "--quiet"],
        "--resume": ["--resume", None, "--epochs", "2"],
        "--dry-run": base + ["--dry-run"],
        "--ladder": base + ["--ladder", ladder_file],
    }


def test_every_documented_cpu_flag_has_a_run(tmp_path, data):
    assert set(flag_runs(tmp_path, data)) == documented_flags() - CUDA_ONLY - SLURM


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def probe(flag: str, monkeypatch, tmp_path):
    """For a flag whose run would succeed without it doing anything: what to watch during the run, and the check
    after it (None for the other flags)."""
    steps = []
    real_step = train.train_step

    def watched_step(state, *args):
        steps.append(dict(model=type(state.step_model).__name__, threads=torch.get_num_threads(),
                          deterministic=torch.are_deterministic_algorithms_enabled()))
        return real_step(state, *args)

    monkeypatch.setattr(train, "train_step", watched_step)
    if flag in ("--amp", "--no-amp"):
        from runner import devices

        monkeypatch.setattr(devices, "computes_in_bfloat16", lambda device: True)  # version 12's default: bfloat16
        dtypes = watch_output_dtypes(monkeypatch, torch.nn.Linear)
        return lambda: dtypes == {torch.bfloat16 if flag == "--amp" else torch.float32}
    if flag == "--compile":
        return lambda: {step["model"] for step in steps} == {"OptimizedModule"}
    if flag == "--deterministic":
        return lambda: steps and all(step["deterministic"] for step in steps)
    if flag == "--threads":
        return lambda: {step["threads"] for step in steps} == {2}
    if flag == "--cache-dir":
        return lambda: len(list((tmp_path / "cache").glob("*.pt"))) == 2  # train and test split
    if flag == "--lease":
        from runner import claims

        leases = []
        watcher = claims.Watcher.__init__
        monkeypatch.setattr(claims.Watcher, "__init__", lambda self, lease=180: (leases.append(lease),
                                                                                 watcher(self, lease))[1])
        return lambda: set(leases) == {30}
    if flag == "--set":
        return lambda: torch.load(tmp_path / "out" / "checkpoint.pt")["model"]["net.1.weight"].shape == (50, 784)
    if flag == "--add":
        return lambda: (tmp_path / "out" / "v2-with-small-conv-net").is_dir()
    if flag == "--holdout":
        return lambda: read_metrics(tmp_path / "out")[-1]["val_acc"] != ""
    if flag == "--holdout-seed":
        return lambda: json.loads((tmp_path / "out" / "config.json").read_text())["holdout_seed"] == 3
    if flag == "--quiet":
        terminal = Terminal()
        monkeypatch.setattr(console, "sys", types.SimpleNamespace(stderr=terminal))
        return lambda: steps and terminal.getvalue() == ""  # a progress bar would show on this terminal
    return None


@pytest.fixture
def restore_torch_settings():
    yield
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("flag", sorted(documented_flags() - CUDA_ONLY - SLURM))
@pytest.mark.slow
def test_each_documented_flag_runs_to_success(cli, tmp_path, data, flag, monkeypatch, restore_torch_settings):
    argv = flag_runs(tmp_path, data)[flag]
    out = tmp_path / "out"
    if flag in ("--resume", "--force"):
        assert cli("1", "--epochs", 1, "--data-dir", data, "--out", out, "--quiet")[0] == 0
    if flag == "--retry-failed":  # a run recorded as failed for good: without the flag the table lacks it (exit 1)
        assert cli("1", "--epochs", 1, "--seeds", 0, "--data-dir", data, "--out", out, "--quiet")[0] == 0
        (out / "v1-seed0" / "failed.txt").write_text("the loss diverged\n")
    if flag == "--resume":
        argv = [out if word is None else word for word in argv]
    else:
        argv = argv + ["--out", out]
    if flag == "--procs":  # processes of their own, through torchrun's launcher
        result = subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, argv)], capture_output=True,
                                text=True, timeout=240)
        assert result.returncode == 0, result.stderr
        assert json.loads((out / "config.json").read_text())["world_size"] == 2  # through torchrun's launcher
        return
    if flag == "--dry-run":  # the plan, and nothing made
        code, stdout, err = cli(*argv)
        assert code == 0 and f"Run folder: {out}" in stdout and not out.exists(), err
        return
    check = probe(flag, monkeypatch, tmp_path)
    code, stdout, err = cli(*argv)
    assert code == 0, (argv, err)
    assert stdout.splitlines()[-1].split(": ", 1)[0] in ("Run folder", "Results folder")
    assert check is None or check(), f"{flag} had no effect"


def test_every_test_the_manual_names_exists():
    """docs/design.md's table of promises names the test that keeps each; a renamed or removed test must show
    there."""
    named = re.findall(r"`(test_\w+)::(test_\w+)`", (ROOT / "docs" / "design.md").read_text())
    assert len(named) > 40
    for module, function in named:
        assert f"def {function}(" in (ROOT / "tests" / f"{module}.py").read_text(), f"{module}::{function}"
