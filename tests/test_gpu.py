"""The CUDA paths, on a machine that has CUDA (skipped elsewhere): tiny runs of the ladder's kinds of version on the
GPU (bfloat16 by default for 12-15 where the GPU has it), with --amp, --no-amp and --compile, Muon (14), an exact
resume with --deterministic, the data kept on the device, and NCCL with --sync-bn under torchrun (one process per
GPU, up to two)."""
import json

import pytest
import torch

from runner import records
from conftest import make_image_folder, make_mnist, read_metrics
from data import Split
from runner.devices import device_rng_state, restore_device_rng
from runner.loaders import BatchPlan, ResidentLoader, gather
from test_distributed import torchrun

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def last_test_accuracy(run) -> float:
    return float(read_metrics(run)[-1]["test_acc"])


@pytest.mark.parametrize("version, extra", [("1", ()), ("1", ("--amp",)), ("1", ("--compile",)), ("9", ()),
                                            ("9", ("--amp",)), ("13", ()), ("13", ("--no-amp",)),
                                            ("13", ("--compile",)), ("14", ())])
def test_versions_train_on_the_gpu(cli, tmp_path, version, extra):
    if version == "1":
        source = ("--data-dir", make_mnist(tmp_path / "data"))
    else:
        source = ("--image-folder", make_image_folder(tmp_path / "images", train=128, test=40))
    run = tmp_path / "run"
    code, out, err = cli(version, "--epochs", 2, "--batch-size", 32, "--device", "cuda", "--out", run, "--quiet",
                         *source, *extra)
    assert code == 0, err
    assert 0 <= last_test_accuracy(run) <= 1
    config = records.RunFolder(run).read_config()
    assert config.runtime.device.startswith("cuda")
    bfloat16 = torch.cuda.is_bf16_supported(including_emulation=False)
    assert config.identity.amp == ("--amp" in extra or (int(version) >= 12 and "--no-amp" not in extra and bfloat16))


def test_a_deterministic_gpu_run_resumes_exactly(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=128, test=40)
    common = ("9", "--batch-size", 32, "--device", "cuda", "--deterministic", "--image-folder", folder, "--quiet")
    assert cli(*common, "--epochs", 4, "--out", tmp_path / "whole")[0] == 0
    assert cli(*common, "--epochs", 2, "--out", tmp_path / "parts")[0] == 0
    code, _, err = cli("--resume", tmp_path / "parts", "--epochs", 4, "--quiet")
    assert code == 0, err
    whole = records.load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    parts = records.load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["model"]
    assert all(torch.allclose(whole[name].float(), parts[name].float(), atol=1e-5) for name in whole)


def test_the_split_stays_on_the_gpu_and_augments_there_as_on_the_cpu():
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    split = Split(images, torch.arange(50) % 10, [])
    loader = ResidentLoader(split, BatchPlan(50, 16), torch.device("cuda"))
    batch, labels, _ = next(loader.batches())
    assert batch.is_cuda and labels.is_cuda
    index = torch.arange(50)
    offsets, flips = torch.randint(0, 9, (50, 2)), torch.rand(50) < 0.5
    on_gpu = gather(images.cuda(), index.cuda(), offsets.cuda(), flips.cuda(), 4)
    assert torch.equal(on_gpu.cpu(), gather(images, index, offsets, flips, 4))


def test_the_training_devices_generator_is_restored():
    device = torch.device("cuda")
    state = device_rng_state(device)
    first = torch.rand(4, device=device)
    restore_device_rng(device, state)
    assert torch.equal(torch.rand(4, device=device), first)


def test_torchrun_on_gpus_joins_with_nccl_and_syncs_batchnorm(tmp_path):
    processes = min(torch.cuda.device_count(), 2)
    folder = make_image_folder(tmp_path / "images", train=64, test=32)
    probe = tmp_path / "probe"
    probe.mkdir()
    result = torchrun("7", "--epochs", 2, "--batch-size", 16, "--device", "cuda", "--sync-bn", "--image-folder", folder,
                      "--out", tmp_path / "run", processes=processes, patch="wrap", probe_dir=probe)
    assert result.returncode == 0, result.stderr
    for rank in range(processes):
        wrapped = json.loads((probe / f"wrap-rank{rank}").read_text())
        assert wrapped == {"backend": "nccl", "batch_norm": ["SyncBatchNorm"]}
    assert len(read_metrics(tmp_path / "run")) == 2
