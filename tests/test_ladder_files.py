"""`--ladder FILE`: a user's ladder file, written in a folder of theirs with the public API (ladder.py), runs every
command; each mistake in one is a single line before anything is written; batch transforms and soft targets."""
import csv
import json
from dataclasses import replace
import subprocess
import sys

import pytest
import torch

import ladder
from conftest import ROOT, make_cifar100, make_mnist
from runner import batch_transforms, ladder_files
from runner.cli_words import command_words
from runner.settings import DATASETS, REGISTERED
from runner.train_command import build_parser

USER_LADDER = '''
import torch
from torch import nn
from ladder import batch_transform, builtin, model, rung


@model(takes=(1, 28))
class TinyNet(nn.Module):
    """A user's own network: one convolution, pooled."""

    def __init__(self, width: int = 4, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, classes), nn.LogSoftmax(dim=1))

    def forward(self, x):
        return self.net(x)


@batch_transform("darken")
def darken(images, labels, classes, generator, by: float = 0.5):
    """A user's own idea: each image darkened by a random share of `by`."""
    shares = torch.rand(len(images), 1, 1, 1, generator=generator).to(images.device)
    return images * (1 - by * shares), labels


rung(101, "fashion_mnist", {"tiny net": {"model": "TinyNet"}}, epochs=1, params=90)
rung(102, "fashion_mnist", {"wider": {"model.width": 8}, "darker": {"batch_transform": "darken"}})
rung(103, "fashion_mnist", {"mixup": {"batch_transform": "mixup", "batch_transform.alpha": 0.4}}, parent=101)
rung(104, "cifar10", {"cutout": {"batch_transform": "cutout", "batch_transform.size": 8}}, parent=builtin(13))
'''


@pytest.fixture
def user_ladder(tmp_path):
    """The user's ladder file, in a folder of theirs (not the package's)."""
    path = tmp_path / "mine" / "my_ladder.py"
    path.parent.mkdir()
    path.write_text(USER_LADDER)
    yield path
    ladder.use_built_in()


@pytest.fixture
def fashion(tmp_path):
    return make_mnist(tmp_path / "data", "FashionMNIST")


def test_list_shows_only_the_files_rows_with_a_built_in_parent_named(cli, user_ladder):
    code, out, err = cli("--ladder", user_ladder, "list")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[1:5]] == ["101", "102", "103", "104"]
    assert "104 = built-in 13 + cutout (batch_transform=cutout batch_transform.size=8)" in out
    assert "103 = 101 + mixup" in out and "\n  1 " not in out and "AirbenchNet" in out
    assert code == 0 and cli("list")[1].splitlines()[1].split()[0] == "1"  # the built-in ladder again without it


def test_a_built_in_parent_gives_its_recipe_and_numerics_and_ablate_names_it(user_ladder):
    from configs import BUILT_IN
    from runner import ablations

    ladder_files.load(str(user_ladder))
    row = ladder.VERSIONS[104]
    assert row.recipe == replace(BUILT_IN[13].recipe, batch_transform="cutout",
                                        batch_transform_args={"size": 8}, epochs=BUILT_IN[13].recipe.epochs)
    assert row.autocast and ladder.parent_row(row) is BUILT_IN[13]
    arms = ablations.plan(104)
    assert [(arm.version, arm.idea) for arm in arms] == [(104, ""), (104, "built-in 13")]
    assert arms[1].recipe == BUILT_IN[13].recipe
    assert ablations.ablatable() == "102-104"  # the file's rows with a parent on their dataset


@pytest.mark.slow
def test_a_table_ablate_export_and_a_changed_file_on_resume(cli, user_ladder, fashion, tmp_path):
    common = ["--data-dir", fashion, "--epochs", 1, "--quiet"]
    code, out, err = cli("--ladder", user_ladder, "101,102", "--seeds", "0,1", "--out", tmp_path / "t", *common)
    assert code == 0, err
    with open(tmp_path / "t" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["version"], row["seeds"]) for row in rows] == [("101", "2"), ("102", "2")]
    assert rows[0]["params"] == "90"
    config = json.loads((tmp_path / "t" / "v101-seed0" / "config.json").read_text())
    assert config["ladder"]["file"] == str(user_ladder.resolve()) and len(config["ladder"]["sha256"]) == 64
    code, out, err = cli("ablate", "103", "--ladder", user_ladder, "--seeds", "0,1", "--out", tmp_path / "a", *common)
    assert code == 0, err
    assert "without mixup" not in out and "103" in out  # one idea: the row and its parent
    run = tmp_path / "t" / "v102-seed0"
    code, out, err = cli("export", run, "--ladder", user_ladder)
    assert code == 0, err
    image = tmp_path / "digit.png"
    from PIL import Image
    Image.new("L", (28, 28), 200).save(image)
    predicted = subprocess.run([sys.executable, str(ROOT / "main.py"), "predict", str(run), str(image), "--onnx"],
                               capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0 and predicted.stdout.startswith(str(image)), predicted.stderr
    code, _, err = cli("--resume", run, "--epochs", 2, "--quiet")
    assert code == 1 and f"is a run of the ladder file {user_ladder.resolve()}: give --ladder" in err
    user_ladder.write_text(USER_LADDER + "# a change\n")
    code, _, err = cli("--ladder", user_ladder, "--resume", run, "--epochs", 2, "--quiet")
    assert code == 1 and "changed since" in err and err.count("\n") == 1, err
    code, _, err = cli("--ladder", user_ladder, "101", "--seeds", "0,1", "--out", tmp_path / "t", *common)
    assert code == 1 and "give the file it was trained with, unchanged" in err


def test_every_command_it_starts_carries_the_file_as_an_absolute_path(user_ladder, monkeypatch):
    monkeypatch.chdir(user_ladder.parent)
    ladder_files.load(user_ladder.name)
    parser = build_parser()
    args = parser.parse_args(["101", "--seeds", "0,1", "--ladder", ladder.SOURCE["file"]])
    words = command_words(parser, args)
    assert words[words.index("--ladder") + 1] == str(user_ladder.resolve())


BAD_FILES = {
    "syntax": ("rung(1, 'mnist', {}\n", ":1: '(' was never closed"),
    "error": ("x = 1\nraise ValueError('no good')\n", ":2: ValueError: no good"),
    "no rows": ("x = 1\n", "defines no rows"),
    "repeated": ("rung(1, 'mnist', {})\nrung(1, 'mnist', {})\n", ":2: row 1 is written twice"),
    "parent": ("rung(1, 'mnist', {})\nrung(2, 'mnist', {}, parent=7)\n", "parent=7 is no earlier row"),
    "built-in": ("rung(1, 'mnist', {}, parent=builtin(99))\n", "there is no built-in version 99"),
    "dataset": ("rung(1, 'imagenet', {})\n", "no dataset 'imagenet'"),
    "model": ("rung(1, 'mnist', {'m': {'model': 'Nope'}})\n", "model=Nope: choose one of"),
    "field": ("rung(1, 'mnist', {'m': {'lr': 'fast'}})\n", "lr=fast: give a number"),
    "untyped": ("@model()\nclass Net(nn.Module):\n    def __init__(self, width=3):\n        super().__init__()\n"
                "rung(1, 'mnist', {})\n", ":1: model Net: argument width has no type"),
    "no log_softmax": ("@model(takes=(1, 28))\nclass Net(nn.Module):\n    def __init__(self, classes: int = 10):\n"
                       "        super().__init__()\n        self.linear = nn.Linear(784, classes)\n"
                       "    def forward(self, x):\n        return self.linear(x.flatten(1))\n"
                       "rung(1, 'mnist', {'m': {'model': 'Net'}})\n", "does not return log-probabilities"),
    "shape": ("@batch_transform('crop')\ndef crop(images, labels, classes, generator):\n"
              "    return images[..., :20, :20], labels\n"
              "rung(1, 'mnist', {'c': {'batch_transform': 'crop'}})\n", "batch transform crop returns images of"),
    "targets": ("@batch_transform('half')\ndef half(images, labels, classes, generator):\n"
                "    return images, torch.full((len(labels), classes), 0.5)\n"
                "rung(1, 'mnist', {'c': {'batch_transform': 'half'}})\n", "returns targets that are neither"),
    "epochs twice": ("rung(1, 'mnist', {'long': {'epochs': 4}}, epochs=3)\n", "an idea sets its epochs already"),
    "params": ("rung(1, 'mnist', {}, params=5)\n", "has 79,510 parameters, not the 5 the row gives"),
    "tflop": ("rung(1, 'mnist', {}, tflop=0.6)\n", "row 1: a whole run counts 0.519 TFLOP, not the 0.6 the row gives"),
}


@pytest.mark.parametrize("mistake", BAD_FILES)
def test_each_mistake_in_a_ladder_file_is_one_line_and_nothing_is_written(cli, tmp_path, mistake):
    body, expected = BAD_FILES[mistake]
    path = tmp_path / "bad.py"
    path.write_text("import torch\nfrom torch import nn\nfrom ladder import batch_transform, builtin, model, rung\n"
                    + body)
    code, out, err = cli("--ladder", path, "1", "--out", tmp_path / "out")
    if expected.startswith(":"):  # a line of the body, after the file's three lines of imports
        line, _, expected = expected[1:].partition(": ")
        expected = f"bad.py:{int(line) + 3}: {expected}"
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()
    ladder.use_built_in()


def test_a_missing_ladder_file_is_one_line(cli, tmp_path):
    code, _, err = cli("list", "--ladder", tmp_path / "none.py")
    assert code == 2 and "no such file" in err and err.count("\n") == 1


def test_mixup_and_cutmix_give_probabilities_and_cutout_a_square_of_zeros():
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    for name in ("mixup", "cutmix"):
        changed, targets = REGISTERED["batch_transform"][name](images, labels, 10, torch.Generator().manual_seed(1))
        assert changed.shape == images.shape and targets.shape == (6, 10)
        assert torch.allclose(targets.sum(1), torch.ones(6)) and (targets.argmax(1) >= 0).all()
        again = REGISTERED["batch_transform"][name](images, labels, 10, torch.Generator().manual_seed(1))
        assert torch.equal(changed, again[0]) and torch.equal(targets, again[1])
    changed, targets = batch_transforms.cutout(torch.ones(4, 1, 16, 16), labels[:4], 10,
                                               torch.Generator().manual_seed(0), size=4)
    zeros = (changed == 0).sum(dim=(1, 2, 3))
    assert torch.equal(targets, labels[:4]) and (zeros <= 16).all() and (zeros > 0).all()


def test_mixups_images_and_targets_are_mixed_by_one_weight():
    images = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    for seed in range(4):
        changed, targets = batch_transforms.mixup(images, torch.tensor([0, 1]), 2,
                                                  torch.Generator().manual_seed(seed))
        # an image's brightness is the share of the bright image in it, and so its target's share of class 1
        assert torch.allclose(changed.mean(dim=(1, 2, 3)), targets[:, 1], atol=1e-6)
        assert torch.allclose(changed.amax(dim=(1, 2, 3)), changed.amin(dim=(1, 2, 3)))


def test_soft_targets_of_one_class_give_the_labels_loss():
    from train import summed_loss

    output = torch.randn(5, 4).log_softmax(1)
    labels = torch.tensor([0, 3, 1, 2, 3])
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    assert torch.allclose(summed_loss(output, one_hot), summed_loss(output, labels))
    assert torch.allclose(summed_loss(output, one_hot, 0.2), summed_loss(output, labels, 0.2))


def test_a_run_with_a_batch_transform_resumes_exactly(cli, user_ladder, fashion, tmp_path):
    common = ["--data-dir", fashion, "--quiet"]
    assert cli("--ladder", user_ladder, "102", "--epochs", 2, "--out", tmp_path / "whole", *common)[0] == 0
    assert cli("--ladder", user_ladder, "102", "--epochs", 1, "--out", tmp_path / "cut", *common)[0] == 0
    code, _, err = cli("--ladder", user_ladder, "--resume", tmp_path / "cut", "--epochs", 2, *common)
    assert code == 0, err
    whole, cut = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
                  for name in ("whole", "cut"))
    assert all(torch.equal(whole[name], cut[name]) for name in whole)


@pytest.mark.slow
def test_the_cifar100_examples_first_row_trains_a_model_of_100_outputs(cli, tmp_path, monkeypatch):
    data = make_cifar100(tmp_path / "data", monkeypatch, train=40, test=20)
    code, out, err = cli("--ladder", ROOT / "examples" / "cifar100.py", "112", "--epochs", 1, "--batch-size", 10,
                         "--data-dir", data, "--out", tmp_path / "r", "--quiet")
    assert code == 0, err
    checkpoint = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert len(checkpoint["classes"]) == 100
    assert [value for value in checkpoint["model"].values() if value.dim() == 2][-1].shape[0] == 100
    ladder.use_built_in()


def test_the_examples_list_from_another_folder(cli):
    examples = sorted((ROOT / "examples").glob("*.py"))
    assert len(examples) == 2
    for example in examples:
        code, out, err = cli("--ladder", example, "list")
        assert code == 0 and f"Rows of the ladder file {example}" in out.replace("\n", " "), err
    ladder.use_built_in()


def test_an_image_folder_is_a_rows_dataset_with_its_own_classes(cli, tmp_path):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "flowers", train=48, test=24, classes=4)
    path = tmp_path / "flowers.py"
    path.write_text(f"from ladder import builtin, image_folder, rung\n"
                    f"rung(1, image_folder({str(folder)!r}, size=32), {{}}, parent=builtin(7), epochs=1)\n")
    code, out, err = cli("--ladder", path, "list")
    assert code == 0 and "flowers" in out.splitlines()[1], err
    code, out, err = cli("--ladder", path, "1", "--out", tmp_path / "r", "--quiet", "--batch-size", 16,
                         "--holdout", 8)
    assert code == 0, err
    checkpoint = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert checkpoint["classes"] == ["class0", "class1", "class2", "class3"]
    assert [value for value in checkpoint["model"].values() if value.dim() == 2][-1].shape[0] == 4
    code, _, err = cli("--ladder", path, "1", "--out", tmp_path / "r2", "--holdout", 100)
    assert code == 2 and "--holdout" in err
    ladder.use_built_in()
    assert not any(name.startswith("folder:") for name in DATASETS)


def test_processes_that_read_different_ladder_files_refuse(monkeypatch):
    from runner import commands, distributed
    from runner.errors import RunnerError

    monkeypatch.setattr(distributed, "everyone", lambda what, value: ["a" * 64, "b" * 64])
    with pytest.raises(RunnerError, match="the processes read different ladder files"):
        commands.check_one_ladder()
    monkeypatch.setattr(distributed, "everyone", lambda what, value: ["a" * 64, "a" * 64])
    commands.check_one_ladder()
