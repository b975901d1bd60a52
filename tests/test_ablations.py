"""The ladder as rows of named ideas, and `main.py ablate V`: V without each idea and the parent (or, with --add,
the parent with each idea alone), each compared with V by seed."""
import csv
import subprocess
import sys
from dataclasses import asdict, fields, replace

import pytest

import ladder
from runner import ablations, ladder_files
from configs import VERSIONS
from conftest import ROOT, make_image_folder
from runner.settings import Recipe

ADAM = dict(optimizer="adam", lr=1e-3)
WIDE = dict(width=32, hidden=256, batch_norm=True, dropout=0.5)
MODERN = dict(normalize=True, optimizer="sgd", momentum=0.9, nesterov=True, label_smoothing=0.2, warmup_start=0.2,
              warmup_fraction=0.23, final_lr_factor=0.07, crop_padding=4, flip="random")
AIRBENCH = dict(MODERN, lr=1.5, momentum=0.85, weight_decay=0.0153 / 11.5, norm_bias_lr_scale=64, batch_size=1024,
                drop_last=True, epochs=10)
MUON = dict(AIRBENCH, crop_padding=2, flip="alternating", optimizer="muon", batch_size=2000, epochs=8, whitening=True,
            lookahead_from=3, tta="mirror+shift", muon_lr=0.24, muon_momentum=0.6, muon_weight_decay=0.1)
# Each version's recipe as the table wrote it before it became a ladder of ideas.
RECIPES = {
    1: Recipe("MLP"), 2: Recipe("MLP"), 3: Recipe("SmallConvNet"), 4: Recipe("WideConvNet"),
    5: Recipe("WideConvNet", **ADAM),
    6: Recipe("ConvNet4", dict(width=8, hidden=32), **ADAM),
    7: Recipe("ConvNet4", dict(width=8, hidden=32, batch_norm=True), **ADAM),
    8: Recipe("ConvNet4", dict(width=32, hidden=256, batch_norm=True), **ADAM),
    9: Recipe("ConvNet4", WIDE, **ADAM),
    10: Recipe("ConvNet4", WIDE, **ADAM, crop_padding=4, flip="random"),
    11: Recipe("ConvNet4", WIDE, **MODERN, lr=0.4, weight_decay=5e-4, batch_size=512, epochs=23),
    12: Recipe("AirbenchNet", **AIRBENCH),
    13: Recipe("AirbenchNet", **dict(AIRBENCH, crop_padding=2, flip="alternating"), whitening=True, lookahead_from=3,
               tta="mirror+shift"),
    14: Recipe("AirbenchNet", **MUON),
    15: Recipe("AirbenchNet", **dict(MUON, epochs=7)),
}


def test_the_ladder_of_ideas_gives_every_version_its_recipe():
    assert {number: row.recipe for number, row in VERSIONS.items()} == RECIPES
    # written alike too (64 stays 64), so run folders made before find their runs
    assert all(asdict(VERSIONS[number].recipe) == asdict(RECIPES[number]) for number in RECIPES)


def test_every_changed_field_belongs_to_an_idea_and_every_idea_changes_something():
    for row in VERSIONS.values():
        if row.parent is None:
            continue
        parent = VERSIONS[row.parent].recipe
        changed = {f.name for f in fields(Recipe) if getattr(row.recipe, f.name) != getattr(parent, f.name)}
        moved = set()  # the Recipe fields the ideas' settings name: model.NAME is in model_args
        for name in (name for settings in row.ideas.values() for name in settings):
            moved |= {"model", "model_args"} if name == "model" else {"model_args"} if name.startswith("model.") \
                else {name}
        assert changed - {"epochs"} <= moved, row.number
        for idea in row.ideas:
            assert ablations.without(row.number, idea) != row.recipe, (row.number, idea)


def test_ablate_plans_the_version_without_each_idea_and_the_parent():
    arms = ablations.plan(13)
    assert [(arm.version, arm.idea) for arm in arms] == [
        (13, ""), (13, "without whitening"), (13, "without translation by 2"), (13, "without alternating flips"),
        (13, "without lookahead"), (13, "without test-time augmentation"), (12, "")]
    without_flips = arms[3].recipe
    assert without_flips.flip == "random" and without_flips.whitening and without_flips.crop_padding == 2
    assert arms[2].recipe.crop_padding == 4 and arms[2].recipe.flip == "alternating"
    assert arms[-1].recipe == VERSIONS[12].recipe
    model = {arm.idea: arm.recipe for arm in ablations.plan(12)}["without airbench network"]
    assert (model.model, model.model_args, model.lr) == ("ConvNet4", WIDE, 1.5)  # the parent's model, V's optimiser


def test_a_version_of_one_idea_is_compared_with_its_parent_only_and_epochs_are_the_versions():
    arms = ablations.plan(7)
    assert [(arm.version, arm.idea) for arm in arms] == [(7, ""), (6, "")]
    assert [arm.recipe.epochs for arm in ablations.plan(11)] == [23] * 8
    assert ablations.plan(11)[-1].recipe == replace(RECIPES[10], epochs=23)


def test_an_idea_may_set_the_epochs_and_the_parent_then_trains_for_its_own():
    arms = ablations.plan(15)
    # 15 without its shorter schedule is its parent as it is: that arm is the parent's
    assert [(arm.version, arm.idea) for arm in arms] == [(15, ""), (14, "")]
    assert arms[0].recipe == RECIPES[15] and arms[1].recipe == RECIPES[14]


def test_add_starts_a_row_whose_idea_sets_the_epochs_from_the_parent_as_it_is():
    arms = ablations.plan(15, add=True)
    assert [(arm.version, arm.idea) for arm in arms] == [(14, ""), (14, "with shorter schedule")]
    assert arms[0].recipe == RECIPES[14] and arms[1].recipe == replace(RECIPES[14], epochs=7)


def test_a_row_with_an_epochs_idea_among_others_keeps_its_epochs_only_where_that_idea_is(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from ladder import builtin, rung\n"
                    "rung(1, 'cifar10', {'narrow': {'model.widths': [32, 64, 64]}, 'longer': {'epochs': 12}},\n"
                    "     parent=builtin(14))\n")
    ladder_files.load(str(path))
    try:
        planned = [(arm.idea, arm.recipe.epochs, arm.recipe.model_args) for arm in ablations.plan(1)]
        added = [(arm.idea, arm.recipe.epochs, arm.recipe.model_args) for arm in ablations.plan(1, add=True)]
    finally:
        ladder.use_built_in()
    narrow = {"widths": [32, 64, 64]}
    assert planned == [("", 12, narrow), ("without narrow", 12, {}), ("without longer", 8, narrow),
                       ("built-in 14", 8, {})]
    assert added == [("built-in 14", 8, {}), ("with narrow", 8, narrow), ("with longer", 12, {})]


def test_add_plans_the_parent_with_each_idea_alone():
    arms = ablations.plan(11, add=True)
    assert [arm.idea for arm in arms] == ["", "with normalised inputs", "with Nesterov SGD", "with weight decay",
                                          "with label smoothing", "with batch 512", "with schedule"]
    assert all(arm.version == 10 for arm in arms)
    nesterov = arms[2].recipe
    assert (nesterov.optimizer, nesterov.lr, nesterov.nesterov, nesterov.normalize) == ("sgd", 0.4, True, False)


@pytest.mark.parametrize("argv, expected", [
    (["ablate", "1"], "version 1 is the first row of the ladder"),
    (["ablate", "2"], "a change of dataset is no idea"),
    (["ablate", "6"], "a change of dataset is no idea. Ablate a version whose parent has its dataset (3-5, 7-15)"),
    (["ablate", "7-9"], "ablate takes one version"),
    (["ablate", "11", "--set", "lr=0.1"], "ablate 11 moves lr itself (idea: Nesterov SGD)"),
    (["ablate", "12", "--set", "model.widths=32x64x64"], "moves model.widths itself (idea: airbench network)"),
    (["ablate", "11", "--batch-size", "64"], "--batch-size: ablate 11 moves batch_size itself (idea: batch 512)"),
    (["ablate", "9", "--set", "weight_decay=0,0.001"], "ablate takes one value per field"),
    (["ablate", "9", "--epochs", "2", "--set", "epochs=3"], "--epochs and --set epochs=... both set epochs"),
    (["ablate", "15", "--epochs", "2"], "--epochs: ablate 15 moves epochs itself (idea: shorter schedule)"),
    (["ablate", "15", "--set", "epochs=2"], "--set epochs: ablate 15 moves epochs itself (idea: shorter schedule)"),
    (["ablate", "9", "--set", "model=AirbenchNet"], "ablate 9 moves model itself (idea: dropout)"),
    (["ablate", "13", "--loader", "torchvision"], "flip=alternating needs the resident loader"),
])
def test_an_ablation_that_cannot_run_is_a_usage_error_before_anything_is_written(cli, tmp_path, argv, expected):
    code, _, err = cli(*argv, "--out", tmp_path / "out", "--data-dir", tmp_path / "data")
    assert code == 2 and expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ablate_trains_every_arm_into_one_results_folder_and_skips_them_when_run_again(cli, tmp_path):
    folder = make_image_folder(tmp_path / "images", train=60, test=30)
    table = tmp_path / "table"
    command = ("ablate", "10", "--epochs", 1, "--seeds", "0", "--batch-size", 20, "--image-folder", folder,
               "--set", "model.width=4", "--out", table, "--quiet")
    code, out, err = cli(*command)
    assert code == 0, err
    assert sorted(path.name for path in table.iterdir() if path.is_dir()) == sorted(
        f"{name}-model.width=4-seed0" for name in ("v10", "v10-without-random-crops", "v10-without-random-flips",
                                                   "v9"))
    with open(table / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["version"], row["arm"]) for row in rows] == [
        ("10", "model.width=4"), ("10", "without random crops model.width=4"),
        ("10", "without random flips model.width=4"), ("9", "model.width=4")]
    code, again, _ = cli(*command)
    assert code == 0 and again.count("; skipped") == 4


def test_each_arm_of_an_ablation_is_compared_with_its_baseline_by_seed():
    from runner import results

    def row(label, accuracies, baseline=False):
        return dict(label=label, acc=sum(accuracies) / len(accuracies), per_seed=dict(enumerate(accuracies)),
                    arm=label, version=13, dataset="cifar10", baseline=baseline)

    # the arm without lookahead scores best: the baseline is still V, not the best arm as in a sweep
    rows = [row("v13", [0.90, 0.91, 0.92], baseline=True), row("v13 without lookahead", [0.905, 0.915, 0.93]),
            row("v12", [0.87, 0.89, 0.88])]
    compared = results.compare_rows(rows)
    assert [(row["label"], row["compared_with"]) for row in compared] == [("v13 without lookahead", "v13"),
                                                                           ("v12", "v13")]
    assert compared[1]["difference"] == pytest.approx(-0.03) and compared[1]["paired_seeds"] == 3


def test_list_names_each_rows_ideas():
    import main

    text = main.version_table()
    assert "13 = 12 + whitening (whitening=true); translation by 2 (crop_padding=2)" in text
    assert " 6 = 5 + on CIFAR-10; 4-layer conv-net" in text


def test_ablates_usage_errors_import_no_torch():
    probe = ("import sys; sys.path.insert(0, {root!r}); import main; main.main(['ablate', '6']); "
             "main.main(['ablate', '11', '--holdout', '49999']); print('torch imported:', 'torch' in sys.modules)"
             ).format(root=str(ROOT))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "torch imported: False" in result.stdout
    assert "a change of dataset is no idea" in result.stderr and "would give 5,000" in result.stderr


def planned_amp(tmp_path, *argv) -> list:
    """(version, idea, identity.amp) of each run the command plans, on a device that computes in bfloat16."""
    import torch

    from runner import checks, commands, distributed, train_command

    parser = train_command.build_parser(argv[0] == "ablate")
    args = parser.parse_args([*argv[1:]] if argv[0] == "ablate" else list(argv))
    args.data_dir = str(tmp_path / "data")
    checks.check_training_args(parser, args)
    return [(run.version, run.idea, run.identity.amp)
            for run in commands.planned_runs(args, torch.device("cpu"), distributed.SOLO)]


def test_every_arm_of_an_ablation_parent_included_trains_in_the_ablated_versions_numerics(tmp_path, monkeypatch):
    from runner import devices

    monkeypatch.setattr(devices, "computes_in_bfloat16", lambda device: True)
    arms = planned_amp(tmp_path, "ablate", "12")
    assert arms[0][:2] == (12, "") and arms[-1][:2] == (11, "") and all(amp for _, _, amp in arms)
    assert all(amp for _, _, amp in planned_amp(tmp_path, "ablate", "12", "--add"))  # every arm runs as 11
    assert not any(amp for _, _, amp in planned_amp(tmp_path, "ablate", "12", "--no-amp"))
    assert not any(amp for _, _, amp in planned_amp(tmp_path, "ablate", "11"))  # 11 and its parent stay in fp32
    assert all(amp for _, _, amp in planned_amp(tmp_path, "ablate", "11", "--amp"))
    assert [amp for _, _, amp in planned_amp(tmp_path, "11,12")] == [False, True]  # the ladder's rows: their own
