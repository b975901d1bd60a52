"""README documents every flag the parser has, and every documented flag that can run on a CPU runs to success."""
import re
import subprocess
import sys

import pytest

import main
from conftest import ROOT, make_image_folder, make_mnist

CUDA_ONLY = {"--sync-bn"}


def readme_flags() -> set:
    text = (ROOT / "README.md").read_text()
    options = text.split("### Options", 1)[1].split("\n### ", 1)[0]
    return {flag for line in options.splitlines() if line.startswith("| `")
            for flag in re.findall(r"--[a-z][a-z-]*", line.split("|")[1])}


def parser_flags() -> set:
    return {option for action in main.build_parser()._actions for option in action.option_strings} - {"-h", "--help"}


def test_readme_documents_every_flag_and_no_other():
    assert readme_flags() == parser_flags()


@pytest.fixture
def data(tmp_path):
    make_mnist(tmp_path / "data", "FashionMNIST")
    return make_mnist(tmp_path / "data")


def flag_runs(tmp_path, data) -> dict:
    """For each flag: the arguments of one short run that uses it (VERSION first)."""
    folder = make_image_folder(tmp_path / "images", size=36, train=40, test=20)
    base = ["1", "--epochs", "1", "--data-dir", data, "--quiet"]
    return {
        "--epochs": base,
        "--batch-size": base + ["--batch-size", "50"],
        "--lr": base + ["--lr", "0.05"],
        "--seed": base + ["--seed", "7"],
        "--seeds": base + ["--seeds", "0,1"],
        "--device": base + ["--device", "cpu"],
        "--data-dir": base,
        "--image-folder": ["6", "--epochs", "1", "--image-folder", folder, "--resize", "--quiet"],
        "--resize": ["1", "--epochs", "1", "--image-folder", folder, "--resize", "--quiet"],
        "--cache-dir": base + ["--cache-dir", tmp_path / "cache"],
        "--loader": base + ["--loader", "torchvision"],
        "--eval-every": base + ["--eval-every", "2"],
        "--amp": base + ["--amp", "--device", "cpu"],
        "--compile": base + ["--compile", "--device", "cpu"],
        "--deterministic": base + ["--deterministic"],
        "--threads": base + ["--threads", "1"],
        "--procs": base + ["--procs", "2", "--device", "cpu", "--threads", "2"],
        "--quiet": base,
        "--out": base,
        "--force": base + ["--force"],
        "--resume": ["--resume", None, "--epochs", "2"],
    }


def test_every_documented_cpu_flag_has_a_run(tmp_path, data):
    assert set(flag_runs(tmp_path, data)) == readme_flags() - CUDA_ONLY


@pytest.mark.parametrize("flag", sorted(readme_flags() - CUDA_ONLY))
def test_each_documented_flag_runs_to_success(cli, tmp_path, data, flag):
    argv = flag_runs(tmp_path, data)[flag]
    out = tmp_path / "out"
    if flag in ("--resume", "--force"):
        assert cli("1", "--epochs", 1, "--data-dir", data, "--out", out, "--quiet")[0] == 0
    if flag == "--resume":
        argv = [out if word is None else word for word in argv]
    else:
        argv = argv + ["--out", out]
    if flag == "--procs":  # processes of their own, through torchrun's launcher
        result = subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, argv)], capture_output=True,
                                text=True, timeout=240)
        assert result.returncode == 0, result.stderr
        assert (out / "checkpoint.pt").exists()
        return
    code, stdout, err = cli(*argv)
    assert code == 0, (argv, err)
    assert stdout.splitlines()[-1].split(": ", 1)[0] in ("Run folder", "Results folder")
