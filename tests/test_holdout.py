"""--holdout N: a validation split cut from the training split (stratified, the same for every arm and seed), the
test split never read, and validation accuracy reported wherever test accuracy is."""
import collections
import csv
import json

import pytest
import torch

from runner import checks
from runner import train_command
from runner import holdout
from runner import loaders
import models
import train
from conftest import make_image_folder, read_metrics
from data import DataSource, load_split
from runner.settings import DATASETS


def test_shares_follow_the_class_sizes_and_add_up_exactly():
    assert holdout.shares([100] * 10, 50) == [5] * 10
    assert holdout.shares([300, 100], 40) == [30, 10]
    assert holdout.shares([10, 10, 10], 5) == [2, 2, 1]  # equal remainders: the first classes give first
    assert holdout.shares([0, 10], 5) == [0, 5]  # a class without images gives none and is no error
    mnist = list(DATASETS["mnist"].class_sizes)
    taken = holdout.shares(mnist, 5000)
    assert sum(taken) == 5000
    assert all(abs(given - 5000 * size / sum(mnist)) < 1 for given, size in zip(taken, mnist))


def test_a_class_that_would_give_all_its_images_is_refused():
    with pytest.raises(holdout.HoldoutError, match="class cat has 3 training images and would give 3"):
        holdout.shares([3, 100], 100, ["cat", "dog"])


def test_the_held_out_images_are_stratified_disjoint_and_fixed_by_the_holdout_seed_alone():
    labels = [index % 10 for index in range(1000)]
    chosen = holdout.held_out(labels, 100, seed=0)
    assert len(set(chosen)) == 100 and collections.Counter(labels[i] for i in chosen) == {c: 10 for c in range(10)}
    assert chosen == holdout.held_out(labels, 100, seed=0)
    assert chosen != holdout.held_out(labels, 100, seed=1)
    # not simply the first images of each class
    assert chosen != sorted(i for c in range(10) for i in [j for j in range(1000) if labels[j] == c][:10])


def splits_of(cli, data_dir, *flags):
    """The splits a run of version 1 trains and tests on, as train.fit loads them."""
    parser = train_command.build_parser()
    args = parser.parse_args(["1", "--data-dir", str(data_dir), *map(str, flags)])
    checks.check_training_args(parser, args)
    from runner import commands
    from runner import distributed

    run = commands.planned_runs(args, torch.device("cpu"), distributed.SOLO)[0]
    return loaders.load_splits(run, DataSource.of(run), resume=False)[0]


def test_every_arm_and_seed_holds_out_the_same_images_and_trains_on_the_rest(cli, mnist_dir):
    whole = load_split(DataSource("mnist", str(mnist_dir)), True)
    first = splits_of(cli, mnist_dir, "--holdout", 40, "--seed", 0)
    other = splits_of(cli, mnist_dir, "--holdout", 40, "--seed", 7, "--set", "lr=0.5")
    assert torch.equal(first[False].images, other[False].images) and torch.equal(first[True].images,
                                                                                   other[True].images)
    assert len(first[False].labels) == 40 and len(first[True].labels) == len(whole.labels) - 40
    assert torch.bincount(first[False].labels).tolist() == [4] * 10  # 200 images, 20 of each class
    both = torch.cat([first[True].images, first[False].images]).flatten(1)
    assert len(torch.unique(both, dim=0)) == len(whole.labels)  # disjoint, and together the whole split
    moved = splits_of(cli, mnist_dir, "--holdout", 40, "--holdout-seed", 1)
    assert not torch.equal(moved[False].images, first[False].images)


@pytest.mark.parametrize("loader", ["resident", "torchvision"])
def test_a_held_out_run_never_reads_the_test_split_and_reports_validation(cli, mnist_dir, tmp_path, loader,
                                                                          monkeypatch):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mnist_dir / "MNIST" / "raw" / name).write_bytes(b"damaged")  # a run that read the test split would fail
    fitted = []
    fit_input_layers = models.fit_input_layers
    monkeypatch.setattr(train, "fit_input_layers", lambda model, images, generator: (
        fitted.append(len(images)), fit_input_layers(model, images, generator)))
    run = tmp_path / "run"
    code, out, err = cli("1", "--holdout", 50, "--epochs", 2, "--batch-size", 32, "--lr", 0.05, "--data-dir",
                         mnist_dir, "--out", run, "--quiet", "--loader", loader, "--set", "normalize=true")
    assert code == 0, err
    assert fitted == [150]  # normalisation fitted on the images trained on, not the held-out ones
    assert "| Val Loss: " in out and "Test Acc" not in out and "(50 held-out training images)" in out
    rows = read_metrics(run)
    assert [name for name in rows[0] if name.startswith("val_")] == ["val_loss", "val_acc"]
    assert all(row["test_acc"] == "" and row["test_loss"] == "" for row in rows)
    assert all(float(row["val_acc"]) * 50 == pytest.approx(round(float(row["val_acc"]) * 50)) for row in rows)
    config = json.loads((run / "config.json").read_text())
    assert (config["holdout"], config["holdout_seed"]) == (50, 0)


@pytest.mark.parametrize("loader", ["resident", "torchvision"])
def test_cifar_without_its_test_batch_trains_with_holdout(cli, cifar_dir, tmp_path, loader):
    (cifar_dir / "cifar-10-batches-py" / "test_batch").unlink()
    code, _, err = cli("6", "--holdout", 20, "--epochs", 1, "--batch-size", 20, "--data-dir", cifar_dir, "--out",
                       tmp_path / "run", "--quiet", "--loader", loader)
    assert code == 0, err
    assert read_metrics(tmp_path / "run")[-1]["val_acc"] != ""


def test_an_image_folder_without_test_split_trains_with_holdout_only(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=60, test=1)
    for image in (folder / "test").rglob("*.png"):
        image.unlink()
    for empty in sorted((folder / "test").rglob("*"), reverse=True):
        empty.rmdir()
    (folder / "test").rmdir()
    code, _, err = cli("6", "--image-folder", folder, "--epochs", 1, "--out", tmp_path / "without", "--quiet")
    assert code == 2 and "has no test/ folder" in err
    code, out, err = cli("6", "--image-folder", folder, "--holdout", 10, "--epochs", 1, "--out", tmp_path / "run",
                         "--quiet")
    assert code == 0, err
    assert float(read_metrics(tmp_path / "run")[-1]["val_acc"]) * 10 == pytest.approx(
        round(float(read_metrics(tmp_path / "run")[-1]["val_acc"]) * 10))
    assert "test" not in json.loads((tmp_path / "run" / "config.json").read_text())["data"]["image_folder"]


@pytest.mark.parametrize("flags, expected", [
    (["--holdout", "0"], "'0' must be between 1"),
    (["--holdout", "59995"], "class 0 has 5,923 training images and would give 5,923"),
    (["--holdout-seed", "3"], "give --holdout N too"),
])
def test_a_holdout_that_cannot_run_is_a_usage_error_before_any_data(cli, tmp_path, flags, expected):
    code, _, err = cli("1", "--data-dir", tmp_path / "nothing", "--out", tmp_path / "run", *flags)
    assert code == 2 and expected in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "nothing").exists()


def test_a_holdout_larger_than_an_image_folders_class_can_give_is_a_usage_error(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=60, test=10)
    code, _, err = cli("6", "--image-folder", folder, "--holdout", 58, "--out", tmp_path / "run")
    assert code == 2 and "class class0 has 6 training images and would give 6" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_held_out_sweep_ranks_on_validation_and_prints_the_command_for_the_whole_split(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    sweep = ("1", "--holdout", 40, "--set", "lr=0.01,0.2", "--seeds", "0,1", "--epochs", 2, "--batch-size", 32,
             "--data-dir", mnist_dir, "--out", table, "--quiet")
    code, out, err = cli(*sweep)
    assert code == 0, err
    with open(table / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(row["test_acc"] == "" and row["val_acc"] != "" for row in rows)
    best = max(rows, key=lambda row: float(row["val_acc"]))
    assert "val acc (± std)" in (table / "results.md").read_text()
    line = out.splitlines()[out.splitlines().index(next(line for line in out.splitlines()
                                                        if line.startswith("Best on the held-out images"))) + 1]
    assert f"v1 {best['arm']} ({float(best['val_acc']):.4f})" in out
    command = line.split()
    assert command[:3] == ["python", "main.py", "1"] and "--holdout" not in command
    assert command[command.index("--set") + 1] == best["arm"] and "--seeds" in command
    code, again, _ = cli(*sweep)
    assert code == 0 and again.count("; skipped") == 4
    code, _, err = cli("1", "--set", "lr=0.01,0.2", "--seeds", "0,1", "--epochs", 2, "--batch-size", 32,
                       "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert code == 1 and "holdout=40" in err  # runs on the whole split are other runs: never mixed in
