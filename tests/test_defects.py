"""Defects found in released code, each with the test that showed it: documented flags, --force, tables,
device state, image-folder junk, the cache, finite divergence, printed commands and restarts."""
import csv
import json
import shlex

import pytest
import torch

import configs
import data
from runner import devices
from runner import loaders
from runner import records
from runner import saved
import train
from conftest import make_image_folder
from test_train import metrics_of, train_tiny


def test_seed_flag_trains_one_version(cli, mnist_dir, tmp_path):
    train_tiny(cli, mnist_dir, tmp_path / "run", "--seed", 1, epochs=1)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 1


def test_seed_flag_trains_a_table(cli, mnist_dir, tmp_path):
    code, _, err = cli("1,3", "--seed", 2, "--epochs", 1, "--data-dir", mnist_dir, "--out", tmp_path / "t",
                       "--quiet")
    assert code == 0, err
    for run in ("v1", "v3"):
        assert json.loads((tmp_path / "t" / run / "config.json").read_text())["seed"] == 2


def test_the_largest_accepted_seed_trains(cli, mnist_dir, tmp_path):
    train_tiny(cli, mnist_dir, tmp_path / "run", "--seed", 2 ** 63 - 1, epochs=1)


def user_files(folder):
    folder.mkdir()
    files = {"config.json": '{"my": "settings"}', "metrics.csv": "a,b\n1,2\n", "checkpoint.pt": "mine",
             "curves.png": "mine", "notes.txt": "mine"}
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


@pytest.mark.parametrize("force", [False, True])
def test_a_users_folder_is_refused_and_left_untouched(cli, mnist_dir, tmp_path, force):
    folder = tmp_path / "project"
    files = user_files(folder)
    code, _, err = cli("1", "--epochs", 1, "--data-dir", mnist_dir, "--out", folder, "--quiet",
                       *(["--force"] if force else []))
    assert code != 0 and "not a run folder" in err and "Traceback" not in err
    assert {path.name: path.read_text() for path in folder.iterdir()} == files


def test_a_users_folder_is_refused_as_a_results_folder(cli, mnist_dir, tmp_path):
    folder = tmp_path / "project"
    files = user_files(folder)
    code, _, err = cli("1,3", "--epochs", 1, "--data-dir", mnist_dir, "--out", folder, "--quiet", "--force")
    assert code != 0 and "not a results folder" in err
    assert {path.name: path.read_text() for path in folder.iterdir()} == files


def results_rows(table):
    with open(table / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_table_whose_runs_were_tested_on_different_epochs(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    common = ("1", "--epochs", 3, "--data-dir", mnist_dir, "--out", table, "--quiet")
    code, _, err = cli(*common, "--seeds", "0,1", "--eval-every", 1)
    assert code == 0, err
    code, out, err = cli(*common, "--seeds", "0,1,2", "--eval-every", 2)
    assert code == 0, err
    assert "Traceback" not in err
    assert results_rows(table)[0]["seeds"] == "3"


@pytest.mark.slow
def test_a_table_uses_a_run_trained_longer_cut_to_the_epochs_asked(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    common = ("1", "--seeds", "0,1", "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert cli(*common, "--epochs", 2)[0] == 0
    asked = metrics_of(table / "v1-seed0")[1]
    assert cli("--resume", table / "v1-seed0", "--epochs", 3, "--quiet")[0] == 0
    code, _, err = cli(*common, "--epochs", 2)
    assert code == 0, err
    row = results_rows(table)[0]
    assert row["seeds"] == "2" and row["epochs"] == "2"
    seed1 = metrics_of(table / "v1-seed1")[1]
    mean = (float(asked["test_acc"]) + float(seed1["test_acc"])) / 2
    assert float(row["test_acc"]) == pytest.approx(mean, abs=1e-4)


def test_a_run_interrupted_between_checkpoint_and_metrics_is_counted(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    common = ("1", "--seeds", "0,1", "--epochs", 2, "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert cli(*common)[0] == 0
    metrics = table / "v1-seed1" / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    code, _, err = cli(*common)
    assert code == 0, err
    assert results_rows(table)[0]["seeds"] == "2"


class FakeTensor:
    def __init__(self, pinned: bool):
        self.pinned = pinned

    def is_pinned(self) -> bool:
        return self.pinned


@pytest.mark.parametrize("pinned, device, expected", [
    (True, "cuda", True), (False, "cuda", False), (True, "mps", False), (False, "mps", False), (True, "cpu", False)])
def test_copies_are_asynchronous_only_from_pinned_memory_to_cuda(pinned, device, expected):
    assert devices.copies_asynchronously(FakeTensor(pinned), torch.device(device)) is expected


def test_only_the_training_devices_generator_is_saved_and_restored(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", device)) or
                        torch.zeros(4, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("set", device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("saved every GPU's generator"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restored by index"))
    state = devices.device_rng_state(torch.device("cuda:1"))
    devices.restore_device_rng(torch.device("cuda:0"), state)
    assert calls == [("get", torch.device("cuda:1")), ("set", torch.device("cuda:0"))]
    assert devices.device_rng_state(torch.device("cpu")) is None
    devices.restore_device_rng(torch.device("mps"), state)  # a CUDA state is not forced onto another kind
    assert len(calls) == 2


def test_amp_on_a_gpu_without_bfloat16_is_a_usage_error(cli, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    code, _, err = cli("1", "--device", "cuda", "--amp", "--data-dir", mnist_dir, "--out", tmp_path / "run")
    assert code == 2 and "bfloat16" in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def add_desktop_junk(folder):
    for split in ("train", "test"):
        first_class = sorted((folder / split).iterdir())[0]
        (first_class / "._0000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
        (first_class / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (first_class / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (folder / split / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        hidden = folder / split / ".ipynb_checkpoints"
        hidden.mkdir()
        (hidden / "0000-checkpoint.png").write_bytes((first_class / sorted(
            p.name for p in first_class.iterdir() if p.suffix == ".png" and not p.name.startswith("."))[0]
        ).read_bytes())


def test_desktop_junk_and_hidden_folders_are_ignored(tmp_path):
    folder = make_image_folder(tmp_path / "images", train=30, test=20)
    add_desktop_junk(folder)
    source = data.DataSource("cifar10", "unused", str(folder), str(tmp_path / "cache"))
    split = data.load_split(source, True)
    assert len(split.labels) == 30 and split.classes == [f"class{i}" for i in range(10)]
    classic = data.classic_dataset(source, True)
    assert len(classic) == 30 and classic.classes == split.classes


def test_a_new_decoding_format_never_serves_old_tensors(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "images", train=20, test=10)
    source = data.DataSource("cifar10", "unused", str(folder), str(tmp_path / "cache"))
    data.load_split(source, True)
    monkeypatch.setattr(data, "CACHE_FORMAT", data.CACHE_FORMAT + 1)
    data.load_split(source, True)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_cache_files_are_written_under_unique_temporary_names(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "images", train=20, test=10)
    source = data.DataSource("cifar10", "unused", str(folder), str(tmp_path / "cache"))
    written = []
    real_save = torch.save
    monkeypatch.setattr(data.torch, "save", lambda obj, f, *a, **k: written.append(str(getattr(f, "name", f)))
                        or real_save(obj, f, *a, **k))
    data.load_split(source, True)
    for cached in (tmp_path / "cache").glob("*.pt"):
        cached.unlink()
    data.load_split(source, True)
    assert len(written) == 2 and written[0] != written[1]
    assert not any(name.endswith(".pt.tmp") for name in written)


def test_a_loss_that_explodes_but_stays_finite_is_a_divergence(cli, mnist_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_tiny(cli, mnist_dir, run, epochs=1)
    real_step = train.train_step

    def exploding(*args):
        loss, correct = real_step(*args)
        return loss * 1e6, correct * 0

    monkeypatch.setattr(train, "train_step", exploding)
    code, _, err = cli("--resume", run, "--epochs", 3, "--quiet")
    assert code == 1 and "epoch 2" in err and "--lr" in err and "Traceback" not in err
    assert records.load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def test_printed_commands_are_shell_quoted(cli, mnist_dir, tmp_path, monkeypatch):
    run = tmp_path / "my runs" / "first run"
    real_step = train.train_step
    calls = {"count": 0}

    def interrupted(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 8:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", interrupted)
    code, _, err = cli("1", "--epochs", 3, "--batch-size", 32, "--data-dir", mnist_dir, "--out", run, "--quiet")
    assert code == 130
    command = err.strip().splitlines()[-1].split("Continue with: ", 1)[1]
    assert shlex.split(command) == ["python", "main.py", "--resume", str(run)]


def test_a_run_interrupted_before_its_first_epoch_simply_starts_again(cli, mnist_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_step = train.train_step
    with monkeypatch.context() as patch:
        patch.setattr(train, "train_step", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
        code, _, err = cli("1", "--epochs", 1, "--data-dir", mnist_dir, "--out", run, "--quiet")
    assert code == 130 and "start the run again" in err
    assert train.train_step is real_step
    code, out, err = cli("1", "--epochs", 1, "--data-dir", mnist_dir, "--out", run, "--quiet")
    assert code == 0, err
    assert "Epoch 1 / 1" in out


def test_a_folder_left_with_only_a_failure_marker_is_reused(cli, mnist_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / records.FAILURE_MARKER).write_text("bad data\n")
    train_tiny(cli, mnist_dir, run, epochs=1)
    assert not (run / records.FAILURE_MARKER).exists()


def test_an_epoch_without_a_step_is_a_data_error(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=20, test=10)
    code, _, err = cli("12", "--epochs", 1, "--image-folder", folder, "--out", tmp_path / "run", "--quiet")
    assert code == 1 and "smaller than one batch of 1024" in err and "--batch-size" in err


# Defects a review found by running the code where users run it (issue: "Where users run it"). Defects 1 and 2
# (tensors left on the CPU; float64 on MPS) are caught by tests/test_devices.py.


@pytest.mark.slow
def test_force_on_a_table_whose_run_folders_do_not_exist_yet(cli, mnist_dir, tmp_path):
    code, _, err = cli("1,3", "--epochs", 1, "--data-dir", mnist_dir, "--out", tmp_path / "new", "--quiet", "--force")
    assert code == 0, err
    assert (tmp_path / "new" / "v1" / "checkpoint.pt").exists() and (tmp_path / "new" / "v3" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_force_on_a_grown_table(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    assert cli("1", "--seeds", "0", "--epochs", 1, "--data-dir", mnist_dir, "--out", table, "--quiet")[0] == 0
    code, _, err = cli("1", "--seeds", "0,1", "--epochs", 1, "--data-dir", mnist_dir, "--out", table, "--quiet",
                       "--force")
    assert code == 0, err
    assert results_rows(table)[0]["seeds"] == "2"


@pytest.mark.slow
def test_testing_more_often_never_changes_the_weights_on_the_classic_loader(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=40, test=20)
    weights = []
    for every in (1, 2):
        run = tmp_path / f"every{every}"
        code, _, err = cli("10", "--epochs", 2, "--batch-size", 16, "--loader", "torchvision", "--eval-every", every,
                           "--image-folder", folder, "--out", run, "--quiet")
        assert code == 0, err
        weights.append(records.load_checkpoint(run / "checkpoint.pt")["model"])
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_table_without_a_result_at_the_epochs_asked_says_so_and_fails(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    common = ("1", "--seeds", "0", "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert cli(*common, "--epochs", 3, "--eval-every", 2)[0] == 0
    code, out, err = cli(*common, "--epochs", 1)
    assert code == 1 and "lack runs" in err and "Traceback" not in err
    rows = results_rows(table)
    assert len(rows) == 1 and rows[0]["test_acc"] == ""
    assert rows[0]["status"] == "seed 0: not tested by epoch 1 (tested after epochs 2, 3)"
    assert "v1 lacks runs: seed 0: not tested by epoch 1" in (table / "results.md").read_text()


def test_a_second_ctrl_c_during_a_download_stops_at_once(cli, tmp_path, monkeypatch):
    import signal

    from runner.console import Stopped

    def interrupted_download(dataset):
        def download(**kwargs):
            raise Stopped(signal.SIGINT)
        return download

    monkeypatch.setattr(data, "torchvision_class", interrupted_download)
    code, _, err = cli("1", "--epochs", 1, "--data-dir", tmp_path / "empty", "--out", tmp_path / "run", "--quiet")
    assert code == 130 and "interrupted" in err and "could not be downloaded" not in err


@pytest.mark.parametrize("argv", [
    ["1", "--threads", "99999999999999999999"],
    ["1", "--device", "cuda:99999999999999999999"],
    ["1", "--procs", "99999999999999999999"],
    ["1", "--epochs", "99999999999999999999"],
    ["eval", "RUN", "--device", "cuda:99999999999999999999"],
])
def test_numbers_out_of_range_are_usage_errors(cli, tmp_path, argv):
    code, _, err = cli(*[tmp_path if word == "RUN" else word for word in argv])
    assert code == 2 and "99999999999999999999" in err.strip().splitlines()[-1] and "unexpected" not in err


def test_one_seed_given_with_seeds_writes_a_results_folder(cli, mnist_dir, tmp_path):
    table = tmp_path / "table"
    code, out, err = cli("1", "--seeds", 3, "--epochs", 1, "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert code == 0, err
    assert (table / "v1-seed3" / "checkpoint.pt").exists() and results_rows(table)[0]["seeds"] == "1"
    assert out.splitlines()[-1] == f"Results folder: {table}"


def test_a_run_that_diverges_from_its_first_steps_fails(cli, mnist_dir, tmp_path):
    code, out, err = cli("1", "--lr", "1e3", "--epochs", 2, "--batch-size", 32, "--data-dir", mnist_dir, "--out",
                         tmp_path / "run", "--quiet")
    assert code == 1 and "Training complete!" not in out
    assert "uniform guess" in err and "e.g. 100 (--lr, or --set lr=)" in err and "Traceback" not in err


def fresh_state():
    from models import build_model
    from runner.state import TrainingState

    recipe = configs.VERSIONS[1].recipe
    return TrainingState(1, recipe, build_model(recipe, 1, 10), torch.device("cpu"), 0, 10)


def test_divergence_has_a_rule_known_before_any_step():
    state = fresh_state()
    assert state.diverged(23.0, 0.10, 10) is None  # below 10 ln 10 = 23.03
    assert state.diverged(24.0, 0.20, 10) is None  # above chance
    assert "uniform guess" in fresh_state().diverged(24.0, 0.15, 10)  # in the very first window


def test_divergence_still_compares_with_the_first_window():
    state = fresh_state()
    assert state.diverged(0.05, 0.9, 10) is None
    assert state.diverged(4.0, 0.1, 10) is None  # under 100 times the first
    assert "100 times its first value" in state.diverged(6.0, 0.1, 10)  # over it, yet under 10 ln 10
    assert state.diverged(6.0, 0.2, 10) is None  # not at chance


def test_several_processes_on_one_gpu_are_refused_by_the_parent(cli, tmp_path):
    code, _, err = cli("1", "--procs", 2, "--device", "cuda:0", "--out", tmp_path / "run")
    assert code == 2 and "would share one GPU" in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_eval_and_predict_follow_the_runs_numerics(cli, tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "images", train=40, test=20)
    run = tmp_path / "run"
    code, _, err = cli("9", "--epochs", 1, "--batch-size", 16, "--amp", "--device", "cpu", "--image-folder", folder,
                       "--out", run, "--quiet")
    assert code == 0, err
    dtypes = []
    real_tta_output = train.tta_output

    def recording(model, images, tta):
        output = real_tta_output(model, images, tta)
        dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else output.dtype)
        return output

    monkeypatch.setattr(saved, "evaluate", lambda *args, **kwargs: train.evaluate(*args, **kwargs))
    monkeypatch.setattr(train, "tta_output", recording)
    monkeypatch.setattr(saved, "tta_output", recording)
    code, out, err = cli("eval", run, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert float(out.split("Test Acc: ")[1].split()[0]) == pytest.approx(
        float(metrics_of(run)[-1]["test_acc"]), abs=1e-4)
    code, _, err = cli("predict", run, next((folder / "test").rglob("*.png")), "--device", "cpu")
    assert code == 0, err
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_the_classic_loader_keeps_its_four_workers_without_warning_the_user(monkeypatch):
    import os
    import warnings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    split = data.Split(torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.arange(8) % 10, [])
    loader = loaders.ClassicLoader(loaders.SplitDataset(split, loaders.classic_transform(28, 0, "none", False)),
                                   loaders.BatchPlan(8, 4), torch.device("cpu"), None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = list(loader.batches())
    assert len(batches) == 2 and loaders.CLASSIC_WORKERS == 4
