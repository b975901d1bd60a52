"""Whole runs on tiny data: the printed output, the record files, resume, evaluation and the results table."""
import csv
import json
import pickle

import pytest
import torch
from PIL import Image

from runner import records
import train
from runner.devices import resolve_device
from configs import VERSIONS
from conftest import make_mnist, watch_output_dtypes
from runner.errors import CheckpointError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metrics_of(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_tiny(cli, data_dir, run_dir, *extra, version="1", epochs=2):
    """A few quick epochs; the learning rate is raised for the tiny data (SGD versions) or kept modest (Adam)."""
    lr = 0.05 if VERSIONS[int(version)].recipe.optimizer == "sgd" else 0.003
    code, out, err = cli(version, "--epochs", epochs, "--batch-size", 32, "--lr", lr, "--data-dir", data_dir,
                         "--out", run_dir, "--quiet", *extra)
    assert code == 0, err
    return out


@pytest.mark.pictures
def test_a_run_prints_the_seed_output_and_writes_its_record(cli, mnist_dir, tmp_path):
    out = train_tiny(cli, mnist_dir, tmp_path / "run")
    lines = out.splitlines()
    assert lines[0] == "Model Parameter Count: 79510"
    assert lines[1] == "Training..."
    assert lines[2].startswith("Epoch 1 / 2 | Train Loss: ") and " | Test Acc: " in lines[2]
    assert lines[4] == "Training complete!"
    assert lines[5].startswith("Test Loss: ") and lines[5].split("Test Acc: ")[1] == lines[3].split("Test Acc: ")[1]
    assert lines[6] == f"Run folder: {tmp_path / 'run'}"
    run = tmp_path / "run"
    rows = metrics_of(run)
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "val_loss",
                            "val_acc", "test_seconds"]
    assert [row["epoch"] for row in rows] == ["1", "2"]
    config = json.loads((run / "config.json").read_text())
    assert config["version"] == 1 and config["seed"] == 0 and config["device"] == str(resolve_device("auto"))
    assert config["overrides"] == {"epochs": 2, "batch_size": 32, "lr": 0.05}
    assert config["classes"][0] == "0 - zero" and config["torch"] == torch.__version__
    state = records.load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 2 and state["metrics"][-1]["test_acc"] == float(rows[-1]["test_acc"])
    assert Image.open(run / "curves.png").size == (1000, 400)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    figures = {tag: events.Images(tag)[-1] for tag in events.Tags()["images"]}
    assert set(figures) == {"test/confusion_matrix", "test/mistakes"}
    assert all(figure.width > 500 for figure in figures.values())  # drawn, not the 1x1 stand-in


def test_default_run_folder_is_named_by_version_and_time(cli, mnist_dir, tmp_path):
    code, out, _ = cli("1", "--epochs", 1, "--data-dir", mnist_dir, "--quiet")
    assert code == 0
    folder = out.splitlines()[-1].removeprefix("Run folder: ")
    assert folder.startswith("runs/v1-") and (tmp_path / folder / "checkpoint.pt").exists()


def test_same_seed_gives_identical_metrics(cli, mnist_dir, tmp_path):
    train_tiny(cli, mnist_dir, tmp_path / "a", "--device", "cpu", version="3")
    train_tiny(cli, mnist_dir, tmp_path / "b", "--device", "cpu", version="3")
    strip = lambda rows: [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]  # noqa: E731
    assert strip(metrics_of(tmp_path / "a")) == strip(metrics_of(tmp_path / "b"))


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(cli, cifar_dir, tmp_path):
    train_tiny(cli, cifar_dir, tmp_path / "whole", "--device", "cpu", version="9", epochs=4)
    train_tiny(cli, cifar_dir, tmp_path / "parts", "--device", "cpu", version="9", epochs=2)
    code, out, err = cli("--resume", tmp_path / "parts", "--epochs", 4, "--quiet")
    assert code == 0, err
    assert out.splitlines()[-1] == f"Run folder: {tmp_path / 'parts'}"
    whole, parts = metrics_of(tmp_path / "whole"), metrics_of(tmp_path / "parts")
    assert len(whole) == len(parts) == 4
    for a, b in zip(whole, parts):
        for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert float(a[name]) == pytest.approx(float(b[name]), abs=1e-6), name


@pytest.mark.slow
def test_eval_every_does_not_change_the_trained_weights(cli, cifar_dir, tmp_path):
    train_tiny(cli, cifar_dir, tmp_path / "every", "--eval-every", 1, "--device", "cpu", version="9", epochs=3)
    train_tiny(cli, cifar_dir, tmp_path / "rarely", "--eval-every", 5, "--device", "cpu", version="9", epochs=3)
    every = records.load_checkpoint(tmp_path / "every" / "checkpoint.pt")["model"]
    rarely = records.load_checkpoint(tmp_path / "rarely" / "checkpoint.pt")["model"]
    assert all(torch.equal(every[name], rarely[name]) for name in every)
    assert [row["test_acc"] != "" for row in metrics_of(tmp_path / "rarely")] == [False, False, True]


def test_resident_and_classic_loaders_learn_alike(cli, tmp_path):
    data = make_mnist(tmp_path / "data", train=600, test=200)
    train_tiny(cli, data, tmp_path / "resident", "--loader", "resident", epochs=2)
    train_tiny(cli, data, tmp_path / "classic", "--loader", "torchvision", epochs=2)
    resident = float(metrics_of(tmp_path / "resident")[-1]["test_acc"])
    classic = float(metrics_of(tmp_path / "classic")[-1]["test_acc"])
    assert resident > 0.5 and classic > 0.5
    assert abs(resident - classic) < 0.15


def test_image_folder_run_end_to_end(cli, image_folder, tmp_path):
    code, out, err = cli("7", "--epochs", 1, "--image-folder", image_folder, "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["classes"][0] == "class0"


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    good = {name: 0 for name in records.CHECKPOINT_KEYS | {"optimizers"}} | {"epoch": 1}
    records.RunFolder(tmp_path).save_checkpoint(good)

    def disk_full(state, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train.torch, "save", disk_full)
    with pytest.raises(OSError):
        records.RunFolder(tmp_path).save_checkpoint(good | {"epoch": 2})
    assert records.load_checkpoint(path)["epoch"] == 1


def test_full_disk_during_a_run_is_one_line(cli, mnist_dir, tmp_path, monkeypatch):
    def disk_full(state, f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train.torch, "save", disk_full)
    code, _, err = cli("1", "--epochs", 1, "--data-dir", mnist_dir, "--out", tmp_path / "run", "--quiet")
    assert code == 1 and "No space left on device" in err and "Traceback" not in err


def test_divergence_stops_with_a_hint_and_keeps_the_last_good_checkpoint(cli, mnist_dir, tmp_path, monkeypatch):
    train_tiny(cli, mnist_dir, tmp_path / "run", epochs=1)
    real_step = train.train_step
    calls = {"count": 0}

    def poisoned(*args):
        loss, correct = real_step(*args)
        calls["count"] += 1
        return (loss * float("nan") if calls["count"] > 2 else loss), correct

    monkeypatch.setattr(train, "train_step", poisoned)
    code, _, err = cli("--resume", tmp_path / "run", "--epochs", 3, "--quiet")
    assert code == 1
    assert "loss became nan in epoch 2" in err and "--lr" in err and "Traceback" not in err
    assert records.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_resume_refuses_finished_missing_corrupt_and_foreign_checkpoints(cli, mnist_dir, cifar_dir, tmp_path):
    run = tmp_path / "run"
    train_tiny(cli, mnist_dir, run, epochs=1)
    code, _, err = cli("--resume", run)
    assert code == 1 and "already finished 1 epochs" in err and "--epochs" in err

    other = tmp_path / "other"
    train_tiny(cli, cifar_dir, other, version="6", epochs=1)
    good = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    code, _, err = cli("--resume", run, "--epochs", 2)
    assert code == 1 and "belongs to version 6" in err

    (run / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    code, _, err = cli("--resume", run, "--epochs", 2)
    assert code == 1 and "is damaged" in err
    assert (run / "checkpoint.pt").read_bytes() == good[: len(good) // 2]

    (run / "checkpoint.pt").unlink()
    code, _, err = cli("--resume", run, "--epochs", 2)
    assert code == 1 and "start it again" in err
    for message in (err,):
        assert "Traceback" not in message


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": Payload()}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="could run code"):
        records.load_checkpoint(path)
    assert "this ran" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        records.load_checkpoint(path)
    assert "this ran" not in capsys.readouterr().out


def test_existing_run_folder_needs_resume_or_force(cli, mnist_dir, tmp_path):
    train_tiny(cli, mnist_dir, tmp_path / "run", epochs=1)
    code, _, err = cli("1", "--epochs", 1, "--data-dir", mnist_dir, "--out", tmp_path / "run", "--quiet")
    assert code == 1 and "--resume" in err and "--force" in err
    train_tiny(cli, mnist_dir, tmp_path / "run", "--force", epochs=2)
    assert len(metrics_of(tmp_path / "run")) == 2


@pytest.mark.slow
@pytest.mark.pictures
def test_table_of_two_versions_writes_results_and_skips_them_next_time(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    code, out, err = cli("1,3", "--epochs", 2, "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert code == 0, err
    assert out.splitlines()[-1] == f"Results folder: {table}"
    with open(table / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["version", "dataset", "params", "epochs", "seeds", "train_acc", "test_acc",
                             "test_acc_std", "ref_train_acc", "ref_test_acc", "test_delta", "seconds", "status",
                             "arm", "val_acc", "val_acc_std", "acc_low", "acc_high", "compared_with", "difference",
                             "difference_low", "difference_high", "paired_seeds", "p_value", "p_holm", "significant"]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert [(row["version"], row["params"], row["epochs"]) for row in rows] == [("1", "79510", "2"),
                                                                                 ("3", "9402", "2")]
    assert abs(float(rows[0]["test_delta"]) - (float(rows[0]["test_acc"]) - 0.95)) < 1e-4
    assert "| 3 | fashion_mnist | 9,402 |" in (table / "results.md").read_text()
    assert (table / "results.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (table / "v1" / "checkpoint.pt").exists() and (table / "v3" / "checkpoint.pt").exists()

    code, out, _ = cli("1,3", "--epochs", 2, "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert code == 0 and out.count("skipped") == 2 and "Training..." not in out


@pytest.mark.slow
def test_table_resumes_an_unfinished_run_and_reports_seed_spread(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    code, _, err = cli("1", "--seeds", "0,1", "--epochs", 1, "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert code == 0, err
    code, out, err = cli("1", "--seeds", "0,1", "--epochs", 2, "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert code == 0, err
    assert out.count("resuming after epoch 1") == 2
    with open(table / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["seeds"] == "2" and row["test_acc_std"] != ""
    assert len(metrics_of(table / "v1-seed1")) == 2
    code, _, err = cli("1", "--seeds", "0,1", "--epochs", 2, "--lr", 0.5, "--data-dir", mnist_dir, "--out", table)
    assert code == 1 and "lr" in err


@pytest.mark.pictures
def test_eval_and_predict_a_saved_run(cli, image_folder, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("7", "--epochs", 2, "--image-folder", image_folder, "--out", run, "--quiet")
    assert code == 0, err
    code, out, err = cli("eval", run, "--quiet")
    assert code == 0, err
    assert out.startswith("Test Loss: ") and "class9" in out
    assert (run / "confusion.png").read_bytes().startswith(PNG_SIGNATURE)
    image = sorted((image_folder / "test").rglob("*.png"))[0]
    code, out, err = cli("predict", run, image)
    assert code == 0, err
    names = out.split(": ", 1)[1].split(", ")
    assert len(names) == 3 and all(name.split()[0].startswith("class") for name in names)
    probabilities = [float(name.split()[1]) for name in names]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    broken = tmp_path / "broken.png"
    broken.write_text("no image")
    code, _, err = cli("predict", run, broken)
    assert code == 1 and "broken.png cannot be read" in err


def test_amp_runs_on_the_cpu_and_is_recorded(cli, mnist_dir, tmp_path, monkeypatch):
    dtypes = watch_output_dtypes(monkeypatch, torch.nn.Conv2d)
    train_tiny(cli, mnist_dir, tmp_path / "run", "--amp", "--device", "cpu", version="3", epochs=1)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["amp"] is True and config["overrides"]["amp"] is True
    assert 0 <= float(metrics_of(tmp_path / "run")[0]["test_acc"]) <= 1
    assert dtypes == {torch.bfloat16}  # training and testing, under bfloat16 autocast


@pytest.mark.slow
def test_an_image_folder_in_a_table_stands_in_for_the_versions_of_its_size(cli, mnist_dir, image_folder, tmp_path):
    table = tmp_path / "table"
    code, out, err = cli("1,6", "--epochs", 1, "--data-dir", mnist_dir, "--image-folder", image_folder, "--out", table,
                         "--quiet")
    assert code == 0, err
    assert json.loads((table / "v1" / "config.json").read_text())["image_folder"] is None
    assert json.loads((table / "v6" / "config.json").read_text())["image_folder"] == str(image_folder)
    assert "| 6 | cifar10 (folder: images) |" in (table / "results.md").read_text()
