"""Devices this machine does not have, caught on the CPU: the training device is taken to be `meta` (tensors with
shapes and no data), so every step runs its device code until the first read of a device value to the host,
which ends it with "Cannot copy out of meta". A tensor left on the CPU meets a meta one before that and fails with
a device mismatch instead. A dispatch mode fails on any float64 tensor made off the CPU: MPS has no float64."""
import argparse

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import bench
from runner import commands
from runner import records
from runner import saved
import train
from conftest import make_image_folder
from data import DataSource

META = torch.device("meta")
HOST_READS = ("Cannot copy out of meta tensor", "cannot be called on meta tensors")
# One version per model family, with the recipe ideas each brings: MLP; SmallConvNet; WideConvNet with Adam;
# ConvNet4 with BatchNorm and dropout; normalised inputs, Nesterov SGD, label smoothing and a schedule (11);
# AirbenchNet with whitening, frozen parameters, alternating flips and test-time augmentation (13); Muon (14).
FAMILIES = ["1", "3", "5", "9", "11", "13", "14"]


class NoFloat64OffTheCpu(TorchDispatchMode):
    """Fails on any operation that makes a float64 tensor on a device other than the CPU."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64 and value.device.type != "cpu":
                raise AssertionError(f"{func} made a float64 tensor on {value.device}, which MPS cannot hold")
        return result


def ends_at_a_host_read(error: BaseException) -> None:
    assert any(text in str(error) for text in HOST_READS), f"{type(error).__name__}: {error}"


def data_args(version: str, mnist_dir, tmp_path) -> list:
    if int(version) <= 5:
        return ["--data-dir", mnist_dir]
    return ["--image-folder", make_image_folder(tmp_path / "images", train=40, test=20)]


@pytest.mark.parametrize("version", FAMILIES)
def test_fit_keeps_every_tensor_on_the_training_device(cli, mnist_dir, tmp_path, monkeypatch, version):
    monkeypatch.setenv(commands.TRACEBACK, "1")  # the error itself, not its one line
    monkeypatch.setattr(train, "resolve_device", lambda name: META)
    with NoFloat64OffTheCpu(), pytest.raises((NotImplementedError, RuntimeError)) as raised:
        cli(version, "--epochs", 1, "--batch-size", 16, *data_args(version, mnist_dir, tmp_path),
            "--out", tmp_path / "run", "--quiet", "--no-amp")  # autocast has no meta device
    ends_at_a_host_read(raised.value)


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A finished run of each family, trained on the CPU, with its data source and one image to classify."""
    from conftest import make_mnist, run_cli

    root = tmp_path_factory.mktemp("trained")
    make_mnist(root / "data", "FashionMNIST")
    mnist = make_mnist(root / "data")
    folder = make_image_folder(root / "images", train=40, test=20)
    runs = {}
    for version in FAMILIES:
        source = ["--data-dir", mnist] if int(version) <= 5 else ["--image-folder", folder]
        out = root / f"v{version}"
        code, _, err = run_cli(version, "--epochs", 1, "--batch-size", 16, *source, "--out", out, "--quiet",
                               "--device", "cpu", "--cache-dir", root / "cache", "--no-amp")  # as in fit's test
        assert code == 0, err
        image = next((folder / "test").rglob("*.png"))
        runs[version] = out, image
    return runs


@pytest.mark.parametrize("version", FAMILIES)
@pytest.mark.slow
def test_eval_keeps_every_tensor_on_the_device(trained_runs, version):
    out, _ = trained_runs[version]
    folder = records.RunFolder(out)
    run = folder.read_config()
    source = DataSource.of(run)
    with NoFloat64OffTheCpu(), pytest.raises((NotImplementedError, RuntimeError)) as raised:
        saved.evaluate_run(folder, run, META, source, quiet=True, tta=run.recipe.tta)
    ends_at_a_host_read(raised.value)


@pytest.mark.parametrize("version", FAMILIES)
def test_predict_keeps_every_tensor_on_the_device(trained_runs, version):
    out, image = trained_runs[version]
    folder = records.RunFolder(out)
    with NoFloat64OffTheCpu(), pytest.raises((NotImplementedError, RuntimeError)) as raised:
        saved.predict(folder, folder.read_config(), [str(image)], META)
    ends_at_a_host_read(raised.value)


@pytest.mark.parametrize("version", [int(version) for version in FAMILIES])
def test_bench_steps_keep_every_tensor_on_the_device(version):
    args = argparse.Namespace(synthetic=True, batch_size=16, amp=False, steps=2, warmup=2, repeats=1)
    with NoFloat64OffTheCpu(), pytest.raises((NotImplementedError, RuntimeError)) as raised:
        bench.bench_version(version, args, META)
    ends_at_a_host_read(raised.value)


def test_the_dispatch_mode_catches_float64_off_the_cpu():
    with NoFloat64OffTheCpu():
        torch.zeros(2, dtype=torch.float64)  # on the CPU: allowed
        with pytest.raises(AssertionError, match="float64"):
            torch.zeros(2, device=META).double()
