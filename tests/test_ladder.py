"""The ladder's later rungs on tiny data: augmentation on the device, the learning-rate schedule, normalisation,
patch whitening, lookahead, alternating flips, test-time augmentation, and exact resumes of runs that use them."""
import csv
import math
import signal

import pytest
import torch

from runner import console
from runner import records
from configs import VERSIONS
from conftest import make_image_folder
from data import Split
from runner.loaders import Augmentation, BatchPlan, ResidentLoader, gather
from models import build_model, fit_input_layers, whitening_layer
from models.inputs import Normalize, PatchWhitening
from runner.settings import Recipe
from runner.state import lookahead_decay, lr_factor
from train import tta_output


def tiny_split(count: int = 40, size: int = 8) -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return Split(images, torch.arange(count) % 10, [str(i) for i in range(10)])


def augmented_epochs(seed: int, epochs: int, padding: int = 4, flip: str = "random") -> list:
    split = tiny_split()
    augmentation = Augmentation(padding, flip, torch.Generator().manual_seed(seed),
                                torch.Generator().manual_seed(seed + 1))
    loader = ResidentLoader(split, BatchPlan(40, 16), torch.device("cpu"), torch.Generator().manual_seed(seed),
                            augmentation)
    return [list(loader.batches(epoch)) for epoch in range(1, epochs + 1)]


def test_augmentation_keeps_shapes_labels_and_range():
    split = tiny_split()
    for images, labels, divisor in augmented_epochs(0, 1)[0]:
        assert images.shape[1:] == split.images.shape[1:] and images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1
        assert len(labels) == len(images) == divisor
    seen = torch.cat([labels for _, labels, _ in augmented_epochs(0, 1)[0]])
    assert sorted(seen.tolist()) == sorted(split.labels.tolist())


def test_augmentation_is_the_identity_without_padding_and_flips():
    split = tiny_split()
    index = torch.randperm(40)
    offsets, flips = torch.zeros(40, 2, dtype=torch.int64), torch.zeros(40, dtype=torch.bool)
    assert torch.equal(gather(split.images, index, offsets, flips, 0), split.images[index])


def test_a_crop_and_a_flip_are_what_reflect_padding_gives():
    split = tiny_split()
    index = torch.arange(40)
    generator = torch.Generator().manual_seed(3)
    offsets, flips = torch.randint(0, 9, (40, 2), generator=generator), torch.rand(40, generator=generator) < 0.5
    padded = torch.nn.functional.pad(split.images.float(), (4, 4, 4, 4), mode="reflect")
    for i, image in enumerate(gather(split.images, index, offsets, flips, 4)):
        expected = padded[i, :, offsets[i, 0]:offsets[i, 0] + 8, offsets[i, 1]:offsets[i, 1] + 8]
        assert torch.equal(image.float(), expected.flip(-1) if flips[i] else expected)


def test_augmentation_differs_between_epochs_and_repeats_for_a_seed():
    first, second = augmented_epochs(0, 2)
    assert not torch.equal(first[0][0], second[0][0])
    again = augmented_epochs(0, 2)
    assert all(torch.equal(a[0], b[0]) for epoch, repeat in zip([first, second], again) for a, b in zip(epoch, repeat))
    assert not torch.equal(augmented_epochs(1, 1)[0][0][0], first[0][0])


def test_alternating_flips_a_random_half_then_all_in_turn():
    augmentation = Augmentation(0, "alternating", torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    flips = [augmentation.draw(1000, epoch)[1] for epoch in range(1, 5)]
    assert 400 < flips[0].sum() < 600
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[2], flips[0]) and torch.equal(flips[3], ~flips[0])


def test_the_schedule_at_its_ends_and_corner():
    recipe = Recipe("MLP", warmup_start=0.2, warmup_fraction=0.23, final_lr_factor=0.07)
    total, warm = 1000, 230
    assert lr_factor(recipe, 0, total) == pytest.approx(0.2)
    assert lr_factor(recipe, warm // 2, total) == pytest.approx(0.6)
    assert lr_factor(recipe, warm, total) == pytest.approx(1.0)
    assert lr_factor(recipe, total, total) == pytest.approx(0.07)
    assert lr_factor(recipe, warm + (total - warm) // 2, total) == pytest.approx((1 + 0.07) / 2, abs=1e-3)
    assert not Recipe("MLP").scheduled and recipe.scheduled


def test_lookahead_decays_as_airbench_does():
    assert lookahead_decay(0, 100) == 0
    assert lookahead_decay(100, 100) == pytest.approx(0.95 ** 5)
    assert lookahead_decay(50, 100) == pytest.approx(0.95 ** 5 / 8)


def test_normalisation_uses_the_training_splits_channel_statistics():
    images = torch.stack([torch.full((8, 8), 10), torch.full((8, 8), 200), torch.arange(64).view(8, 8)]).to(
        torch.uint8).expand(6, 3, 8, 8).clone()
    images[3:, 0] = 30
    layer = Normalize(3)
    layer.fit(images)
    pixels = images.double() / 255
    assert torch.allclose(layer.mean.view(3).double(), pixels.mean(dim=(0, 2, 3)), atol=1e-6)
    std = pixels.std(dim=(0, 2, 3), unbiased=False)
    assert std[1] == 0 and layer.std[1] == 1 / 255  # a constant channel is never divided by zero
    assert torch.allclose(layer.std.view(3).double()[[0, 2]], std[[0, 2]], atol=1e-6)
    normalised = layer(pixels.float())
    assert torch.allclose(normalised.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(normalised.std(dim=(0, 2, 3), unbiased=False)[[0, 2]], torch.ones(2), atol=1e-5)


def test_whitening_a_known_covariance_gives_the_identity_covariance():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(12, 12, generator=generator)
    patches = torch.randn(200_000, 12, generator=generator) @ mixing.T  # covariance: mixing @ mixing.T
    images = patches.view(-1, 3, 2, 2)  # every 2x2 image is exactly one patch
    layer = PatchWhitening(3)
    layer.fit(images)
    whitened = torch.nn.functional.conv2d(images, layer.conv.weight[:12]).flatten(1)
    covariance = torch.cov(whitened.T)
    assert torch.allclose(covariance, torch.eye(12), atol=0.02)
    assert torch.equal(layer.conv.weight[12:], -layer.conv.weight[:12])
    assert not layer.conv.weight.requires_grad and layer.conv.bias.requires_grad


def test_test_time_augmentation_keeps_shapes_and_agrees_on_invariant_images():
    torch.manual_seed(0)
    model = build_model(VERSIONS[13].recipe, 3, 10).eval()
    fit_input_layers(model, torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.Generator())
    constant = torch.rand(4, 3, 1, 1).expand(4, 3, 32, 32).contiguous()
    with torch.no_grad():
        plain = tta_output(model, constant, "none")
        for tta in ("mirror", "mirror+shift"):
            augmented = tta_output(model, constant, tta)
            assert augmented.shape == (4, 10)
            assert torch.allclose(augmented, plain, atol=1e-5)
        varied = torch.rand(4, 3, 32, 32)
        assert not torch.allclose(tta_output(model, varied, "mirror+shift"), tta_output(model, varied, "none"))


def metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]


@pytest.mark.parametrize("version, epochs, stop_after", [(11, 3, 1), (13, 4, 3), (14, 2, 1)])
@pytest.mark.slow
def test_a_run_stopped_and_resumed_equals_one_run_whole(cli, tmp_path, monkeypatch, version, epochs, stop_after):
    """Scheduled runs with augmentation (11), with whitening, alternating flips and lookahead (13), and with Muon
    beside SGD (14: two optimizers in the checkpoint)."""
    folder = make_image_folder(tmp_path / "images", train=96, test=30)
    argv = (version, "--epochs", epochs, "--batch-size", 16, "--image-folder", folder, "--device", "cpu", "--quiet")
    code, _, err = cli(*argv, "--out", tmp_path / "whole")
    assert code == 0, err
    saves = []
    real_save = records.RunFolder.save_checkpoint

    def save_then_stop(self, state):
        real_save(self, state)
        saves.append(state["epoch"])
        if len(saves) == stop_after:
            console.STOP.signum = signal.SIGINT

    with monkeypatch.context() as patch:
        patch.setattr(records.RunFolder, "save_checkpoint", save_then_stop)
        code, _, err = cli(*argv, "--out", tmp_path / "parts")
    assert code == 130 and records.load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["epoch"] == stop_after
    code, out, err = cli("--resume", tmp_path / "parts", "--quiet")
    assert code == 0, err
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "parts")
    whole = records.load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    parts = records.load_checkpoint(tmp_path / "parts" / "checkpoint.pt")
    assert all(torch.equal(whole["model"][name], parts["model"][name]) for name in whole["model"])
    assert whole["metrics"][-1].get("final_test_acc") == parts["metrics"][-1].get("final_test_acc")


def test_a_scheduled_run_refuses_other_epochs_on_resume(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=48, test=20)
    run = tmp_path / "run"
    assert cli(11, "--epochs", 1, "--batch-size", 16, "--image-folder", folder, "--out", run, "--quiet")[0] == 0
    code, _, err = cli("--resume", run, "--epochs", 3)
    assert code == 1 and "schedule" in err and "new run" in err
    code, _, err = cli("--resume", run)
    assert code == 1 and "cannot be extended" in err


def test_the_lr_column_shows_the_rate_at_the_end_of_each_epoch(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=64, test=20)
    run = tmp_path / "run"
    assert cli(11, "--epochs", 2, "--batch-size", 16, "--lr", 0.1, "--image-folder", folder, "--out", run,
               "--quiet")[0] == 0
    recipe = VERSIONS[11].recipe
    rates = [float(row["lr"]) for row in metrics(run)]
    assert rates == pytest.approx([0.1 * lr_factor(recipe, 3, 8), 0.1 * lr_factor(recipe, 7, 8)])


def test_v13_prints_that_its_final_test_uses_test_time_augmentation(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=32, test=20)
    code, out, err = cli(13, "--epochs", 1, "--batch-size", 16, "--image-folder", folder, "--out", tmp_path / "r",
                         "--quiet")
    assert code == 0, err
    final = out.splitlines()[-2]
    assert final.startswith("Test Loss: ") and final.endswith("(test-time augmentation: mirror and 1-pixel shifts)")
    assert whitening_layer(build_model(VERSIONS[13].recipe, 3, 10)) is not None
    assert math.isfinite(float(final.split("Test Acc: ")[1].split()[0]))


def test_the_classic_loop_trains_the_augmented_and_normalised_versions(cli, tmp_path):
    """--loader torchvision keeps working for 10 and 11: torchvision's RandomCrop (reflect) and RandomHorizontalFlip
    in the workers, the normalisation in the model as on the resident path."""
    folder = make_image_folder(tmp_path / "images", train=48, test=20)
    for version in (10, 11):
        code, _, err = cli(version, "--epochs", 1, "--batch-size", 16, "--loader", "torchvision", "--image-folder",
                           folder, "--out", tmp_path / f"v{version}", "--quiet")
        assert code == 0, err
    state = records.load_checkpoint(tmp_path / "v11" / "checkpoint.pt")
    assert state["model"]["0.std"].flatten().tolist() != [1.0, 1.0, 1.0]  # fitted to the training split
