"""Progressive resolution: a recipe's first epochs train on smaller images (early_size, early_epochs), resized on the
device; the network pools whatever is left of them, its tests see the images' own size, and the arithmetic counts
each epoch at its size."""
from dataclasses import replace

import pytest
import torch

import configs  # noqa: F401  (the built-in rows)
import train
from conftest import make_image_folder, read_metrics
from ladder import BUILT_IN
from models.airbench import AirbenchNet
from runner.arithmetic import run_tflop


def test_a_run_trains_its_early_epochs_on_smaller_images_and_tests_on_whole_ones(cli, tmp_path, monkeypatch):
    seen, real_build = [], train.build_model

    def build_and_watch(recipe, channels, classes):
        model = real_build(recipe, channels, classes)
        model.register_forward_pre_hook(lambda module, inputs: seen.append((module.training, inputs[0].shape[-1])))
        return model

    monkeypatch.setattr(train, "build_model", build_and_watch)
    folder = make_image_folder(tmp_path / "images", train=32, test=16)
    code, _, err = cli("13", "--epochs", 3, "--batch-size", 16, "--image-folder", folder, "--out", tmp_path / "run",
                       "--quiet", "--no-amp", "--set", "early_size=20", "--set", "early_epochs=2")
    assert code == 0, err
    trained = [size for training, size in seen if training]
    assert trained == [20] * 4 + [32] * 2  # two steps an epoch
    assert {size for training, size in seen if not training} == {32}
    assert len(read_metrics(tmp_path / "run")) == 3


@pytest.mark.parametrize("settings, message", [
    (["early_size=32", "early_epochs=2"], "give a size below the images' (32)"),
    (["early_size=16"], "and early_epochs=N"),
    (["early_epochs=2"], "early_epochs=2 needs early_size=S"),
])
def test_an_early_size_that_cannot_be_is_one_line(cli, tmp_path, settings, message):
    words = [word for setting in settings for word in ("--set", setting)]
    code, out, err = cli("13", *words, "--image-folder", tmp_path, "--dry-run")
    assert code == 2 and message in err.splitlines()[-1], err


def test_a_model_for_one_image_size_refuses_an_early_size(cli, tmp_path):
    code, _, err = cli("9", "--set", "early_size=16", "--set", "early_epochs=1", "--image-folder", tmp_path,
                       "--dry-run")
    assert code == 2 and "needs a model that takes images of any size" in err, err


def test_the_network_pools_what_is_left_of_smaller_images_as_airbench_pools_whole_ones():
    torch.manual_seed(0)
    net = AirbenchNet(widths=(8, 16, 16), in_channels=3).eval()
    features = net.net[:3]
    for size in (31, 32):  # 3x3 and 4x4 maps: airbench94's 3x3 max-pool, as before
        images = torch.randn(2, 3, size, size)
        expected = net.net[4:](torch.nn.functional.max_pool2d(features(images), 3)) * net.scale
        assert torch.equal(net(images), expected.log_softmax(dim=1))
    for size in (12, 16, 23):  # 1x1 and 2x2 maps: pooled whole
        assert net(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_the_arithmetic_counts_each_epoch_at_its_size():
    row = BUILT_IN[14]
    whole = run_tflop(row)
    early = {epochs: run_tflop(replace(row, recipe=replace(row.recipe, early_size=16, early_epochs=epochs)))
             for epochs in (4, 8)}
    assert early[8] < 0.4 * whole  # (16 / 32)^2 of the convolutions in training, the tests at 32 x 32
    assert early[4] == pytest.approx((whole + early[8]) / 2, rel=1e-9)
