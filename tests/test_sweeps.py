"""--set: any recipe field or model argument from the command line, parsed by its type, and sweeps over comma lists
into a results folder whose runs are found by their config.json; a failed arm is marked and the others go on."""
import csv
import inspect
import json
import subprocess
import sys

import pytest

from runner import overrides
from configs import VERSIONS
from conftest import ROOT
from runner.settings import MODEL_KINDS, Recipe


def parsed(*words):
    return overrides.parse_assignments(list(words))


def test_every_field_type_is_parsed_by_its_type():
    assert parsed("nesterov=true", "drop_last=false") == {"nesterov": [True], "drop_last": [False]}
    assert parsed("batch_size=128") == {"batch_size": [128]}
    assert parsed("weight_decay=1e-3,5e-4") == {"weight_decay": [0.001, 0.0005]}
    assert parsed("flip=alternating", "tta=mirror+shift", "optimizer=adam", "model=AirbenchNet") == {
        "flip": ["alternating"], "tta": ["mirror+shift"], "optimizer": ["adam"], "model": ["AirbenchNet"]}
    assert parsed("model.widths=32x64x64,64x256x256") == {"model.widths": [[32, 64, 64], [64, 256, 256]]}
    assert parsed("model.dropout=0.2") == {"model.dropout": [0.2]}


def test_one_written_form_per_value():
    assert [overrides.written(parsed(f"lr={text}")["lr"][0]) for text in ("1e-3", "0.001", "1E-3")] == ["0.001"] * 3
    with pytest.raises(overrides.SetError, match="a value repeats"):
        parsed("lr=1e-3,0.001")  # the same arm twice
    assert overrides.written(True) == "true" and overrides.written([64, 256]) == "64x256"


@pytest.mark.parametrize("word, expected", [
    ("weight_decy=1e-3", "did you mean weight_decay?"),
    ("model.dropot=0.2", "did you mean model.dropout?"),
    ("nesterov=yes", "give true or false"),
    ("flip=sideways", "choose one of none, random, alternating"),
    ("batch_size=1.5", "give a whole number"),
    ("lr=fast", "give a number"),
    ("lr=inf", "give a finite number"),
    ("lr=0", "must be above 0"),
    ("crop_padding=-1", "must be at least 0"),
    ("label_smoothing=1", "must be at least 0 and below 1"),
    ("model.widths=64,a", "give whole numbers joined by x"),
    ("lr", "give NAME=VALUE"),
    ("lr=0.1,0.1", "a value repeats"),
    ("model_args=x", "no field model_args"),
])
def test_bad_names_and_values_are_refused_with_what_to_do(word, expected):
    with pytest.raises(overrides.SetError, match=expected.replace("?", r"\?").replace("+", r"\+")):
        parsed(word)


def test_a_name_given_twice_is_refused():
    with pytest.raises(overrides.SetError, match="given twice"):
        parsed("lr=0.1", "lr=0.2")


def test_the_grid_is_every_combination_in_the_order_given():
    assert overrides.grid(parsed("lr=0.1,0.2", "flip=none,random")) == [
        {"lr": 0.1, "flip": "none"}, {"lr": 0.1, "flip": "random"}, {"lr": 0.2, "flip": "none"},
        {"lr": 0.2, "flip": "random"}]
    assert overrides.grid({}) == [{}]


def test_an_arm_sets_recipe_fields_and_model_arguments():
    recipe = overrides.apply(VERSIONS[9].recipe, {"weight_decay": 1e-3, "model.dropout": 0.2})
    assert recipe.weight_decay == 1e-3 and recipe.model_args == dict(VERSIONS[9].recipe.model_args, dropout=0.2)
    assert overrides.apply(VERSIONS[1].recipe, {"model": "AirbenchNet"}).model_args == {}  # the new model's defaults
    with pytest.raises(overrides.SetError, match="ConvNet4 has no argument widths"):
        overrides.apply(VERSIONS[9].recipe, {"model.widths": [64]})


@pytest.mark.parametrize("version, arm, expected", [
    (9, {"whitening": True}, "needs a model that takes any number of channels"),
    (1, {"crop_padding": 28}, "less than the images' size"),
    (1, {"model": "ConvNet4"}, "takes RGB 32x32 images"),
    (6, {"model": "MLP"}, "takes grey 28x28 images"),
    (1, {"nesterov": True}, "with a momentum above 0"),
])
def test_combinations_that_cannot_run_are_refused(version, arm, expected):
    recipe = overrides.apply(VERSIONS[version].recipe, arm)
    with pytest.raises(overrides.SetError, match=expected):
        overrides.check_recipe(recipe, VERSIONS[version].dataset, classic_loader=False)


def test_the_model_kinds_agree_with_the_models_themselves():
    from models import MODELS

    assert set(MODEL_KINDS) == set(MODELS)
    for name, kind in MODEL_KINDS.items():
        parameters = inspect.signature(MODELS[name]).parameters
        assert set(parameters) - set(kind.arguments) <= {"classes", "in_channels"}, name
        for argument, (_, _, default) in kind.arguments.items():
            real = parameters[argument].default
            assert (None if real is inspect.Parameter.empty else real) == default, (name, argument)


def test_usage_errors_of_set_import_no_torch():
    probe = ("import sys; sys.path.insert(0, {root!r}); import main; main.main(['9', '--set', 'lr=fast']); "
             "print('torch imported:', 'torch' in sys.modules)").format(root=str(ROOT))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "torch imported: False" in result.stdout and "--set lr=fast: give a number" in result.stderr


def test_fields_lists_every_field_with_what_it_takes_and_imports_no_torch():
    probe = ("import sys; sys.path.insert(0, {root!r}); import main; main.main(['fields']); "
             "print('torch imported:', 'torch' in sys.modules)").format(root=str(ROOT))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "torch imported: False" in result.stdout
    names = [line.split()[0] for line in result.stdout.splitlines()[1:-1]]
    assert set(names) == set(Recipe.__dataclass_fields__) - overrides.NOT_SET_HERE | {
        f"{chosen}.{argument}" for chosen, (_, kinds) in overrides.CHOSEN.items() for kind in kinds.values()
        for argument in kind.arguments}
    assert {"batch_transform.alpha", "batch_transform.size", "model.width"} <= set(names)
    flip = next(line for line in result.stdout.splitlines() if line.startswith("flip "))
    assert "none | random | alternating" in flip and flip.rstrip().endswith("10,11,12,13,14,15")


def rows(table):
    with open(table / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def sweep(cli, mnist_dir, table, *words):
    return cli("1", *words, "--epochs", 1, "--batch-size", 32, "--data-dir", mnist_dir, "--out", table, "--quiet")


def test_a_sweep_writes_a_run_per_arm_and_a_grown_grid_runs_only_its_new_arms(cli, mnist_dir, tmp_path):
    table = tmp_path / "sweep"
    code, out, err = sweep(cli, mnist_dir, table, "--set", "lr=0.05,0.1", "--set", "model.hidden=50")
    assert code == 0, err
    assert sorted(path.name for path in table.iterdir() if path.is_dir()) == [
        "v1-lr=0.05-model.hidden=50", "v1-lr=0.1-model.hidden=50"]
    assert [(row["arm"], row["params"], row["status"]) for row in rows(table)] == [
        ("lr=0.05 model.hidden=50", "39760", "ok"), ("lr=0.1 model.hidden=50", "39760", "ok")]
    config = json.loads((table / "v1-lr=0.1-model.hidden=50" / "config.json").read_text())
    assert config["arm"] == {"lr": 0.1, "model.hidden": 50} and config["model_args"] == {"hidden": 50}
    code, out, err = sweep(cli, mnist_dir, table, "--set", "lr=0.05,0.1,0.2", "--set", "model.hidden=50")
    assert code == 0, err
    assert out.count("Training...") == 1 and out.count("skipped") == 2
    assert len(rows(table)) == 3
    with open(table / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [(run["arm"], run["seed"], run["status"], run["folder"]) for run in runs][-1] == (
        "lr=0.2 model.hidden=50", "0", "ok", "v1-lr=0.2-model.hidden=50")
    assert float(runs[0]["test_acc"]) == float(rows(table)[0]["test_acc"])


def test_runs_are_found_by_their_config_not_by_their_folder_name(cli, mnist_dir, tmp_path):
    table = tmp_path / "sweep"
    assert sweep(cli, mnist_dir, table, "--seeds", 0)[0] == 0  # v1-seed0: version 1's own lr, 0.01
    code, out, err = sweep(cli, mnist_dir, table, "--seeds", 0, "--set", "lr=0.01,0.05")
    assert code == 0, err
    assert out.count("Training...") == 1 and "v1-seed0; skipped" in out
    assert sorted(path.name for path in table.iterdir() if path.is_dir()) == ["v1-lr=0.05-seed0", "v1-seed0"]


def test_a_folder_name_never_holds_two_different_runs(cli, mnist_dir, tmp_path):
    table = tmp_path / "sweep"
    assert sweep(cli, mnist_dir, table, "--set", "lr=0.05,0.1")[0] == 0
    config = table / "v1-lr=0.05" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lr": 0.07}))  # another run under that name
    code, _, err = sweep(cli, mnist_dir, table, "--set", "lr=0.05,0.1")
    assert code == 1 and "was trained with lr=0.07, this command asks 0.05" in err


def test_a_failed_arm_is_marked_and_the_others_go_on_unless_fail_fast(cli, mnist_dir, tmp_path):
    table = tmp_path / "sweep"
    code, out, err = sweep(cli, mnist_dir, table, "--set", "lr=1e3,0.05")
    assert code == 1 and "lack runs" in err
    assert [row["status"].split(":")[:2] for row in rows(table)] == [["seed 0", " failed"], ["ok"]]
    assert (table / "v1-lr=1000.0" / "failed.txt").read_text().startswith("the loss reached")
    code, out, err = sweep(cli, mnist_dir, table, "--set", "lr=1e3,0.05")
    assert code == 1 and "failed earlier" in out and "Training..." not in out  # not tried again
    code, out, err = sweep(cli, mnist_dir, tmp_path / "fast", "--set", "lr=1e3,0.05", "--fail-fast")
    assert code == 1 and "uniform guess" in err and out.count("Training...") == 1
    assert not (tmp_path / "fast" / "v1-lr=0.05" / "checkpoint.pt").exists()  # placed, never trained


# Settings whose folder names, written out, would pass the file system's 255 characters (two arms, by lr).
LONG_SETTINGS = ["lr=0.012345678901234567,0.023456789012345678", "momentum=0.00012345678901234567",
                 "weight_decay=1.2345678901234567e-09", "label_smoothing=1.2345678901234567e-09",
                 "warmup_start=0.99999999999999989", "final_lr_factor=0.99999999999999989",
                 "norm_bias_lr_scale=1.0000000000000002", "muon_lr=0.23456789012345678",
                 "muon_momentum=0.56789012345678901", "muon_weight_decay=0.12345678901234567"]


@pytest.mark.slow
def test_long_settings_name_run_folders_within_120_characters_found_again_by_the_same_command(cli, mnist_dir,
                                                                                              tmp_path):
    table, words = tmp_path / "sweep", [word for setting in LONG_SETTINGS for word in ("--set", setting)]
    code, out, err = sweep(cli, mnist_dir, table, *words, "--seeds", "0,1")
    assert code == 0, err
    names = sorted(path.name for path in table.iterdir() if path.is_dir())
    assert len(names) == 4 and all(len(name) <= 120 for name in names), names
    assert all(name.startswith("v1-lr=0.0") and name[-6:] in ("-seed0", "-seed1") for name in names)
    assert len({name[:-6] for name in names}) == 2  # an arm's seeds share its shortened name, the arms differ
    code, again, err = sweep(cli, mnist_dir, table, *words, "--seeds", "0,1")
    assert code == 0 and again.count("; skipped") == 4, err
    assert sorted(path.name for path in table.iterdir() if path.is_dir()) == names
    code, out, err = cli("1", *words[:1], "lr=0.05", *words[2:], "--epochs", 1, "--data-dir", mnist_dir, "--quiet")
    assert code == 0, err
    folder = out.splitlines()[-1].split("Run folder: runs/")[1]  # one run: its name and the time
    assert folder.startswith("v1-lr=0.05-momentum=") and len(folder) <= 120


def test_a_single_arm_trains_one_run_named_for_its_settings(cli, mnist_dir, tmp_path):
    code, out, err = cli("1", "--set", "weight_decay=1e-3", "--epochs", 1, "--data-dir", mnist_dir, "--quiet")
    assert code == 0, err
    folder = out.splitlines()[-1].split("Run folder: ")[1]
    assert folder.startswith("runs/v1-weight_decay=0.001-")
    assert json.loads((tmp_path / folder / "config.json").read_text())["weight_decay"] == 0.001


def test_resume_refuses_set(cli, mnist_dir, tmp_path):
    assert sweep(cli, mnist_dir, tmp_path / "run")[0] == 0
    code, _, err = cli("--resume", tmp_path / "run", "--set", "lr=0.1")
    assert code == 2 and "--set cannot change when resuming" in err


def test_an_epochs_sweep_keeps_each_arm_in_its_own_folder(cli, mnist_dir, tmp_path):
    table = tmp_path / "sweep"
    argv = ("1", "--set", "epochs=2,10", "--batch-size", 32, "--data-dir", mnist_dir, "--out", table, "--quiet")
    assert cli(*argv)[0] == 0
    code, out, err = cli(*argv)
    assert code == 0 and "Training..." not in out, err
    for epochs in (2, 10):
        assert json.loads((table / f"v1-epochs={epochs}" / "config.json").read_text())["epochs"] == epochs
        assert f"v1-epochs={epochs}; skipped" in out


def test_a_failed_run_of_another_recipe_under_an_arms_name_is_refused(cli, mnist_dir, tmp_path):
    table = tmp_path / "sweep"
    assert sweep(cli, mnist_dir, table, "--set", "lr=1e3,0.05")[0] == 1
    config = table / "v1-lr=1000.0" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "momentum": 0.5}))
    code, out, err = sweep(cli, mnist_dir, table, "--set", "lr=1e3,0.05")
    assert code == 1 and "was trained with momentum=0.5" in err and "failed earlier" not in out
