"""The command lines the runner rebuilds from parsed values (the one that continues a table, the whole-split one
of a held-out sweep, each Slurm task's) parse to the same settings; an abbreviated option is refused, since a line
rebuilt by full names would not hold it."""
import shlex
from pathlib import Path

import pytest

import main
import train
from runner import checks
from runner import train_command
from runner import commands
from runner import slurm
from conftest import make_mnist

TABLE = ["1,3", "--lr", "0.05", "--batch-size", "32", "--epochs", "2", "--set", "momentum=0.5,0.9", "--set",
         "label_smoothing=0.1", "--seed", "0", "--loader", "torchvision", "--no-amp", "--compile", "--deterministic",
         "--sync-bn", "--resize", "--holdout", "20", "--holdout-seed", "3", "--device", "cpu", "--threads", "2",
         "--data-dir", "my data", "--image-folder", "images", "--cache-dir", "cache", "--eval-every", "2", "--quiet",
         "--out", "table", "--force", "--fail-fast", "--retry-failed", "--lease", "30", "--ladder", "/my/ladder.py"]
SLURM = ["--slurm", "--slurm-partition", "gpu", "--slurm-gpus", "2", "--slurm-cpus", "4", "--slurm-time", "90",
         "--slurm-tasks", "3", "--slurm-array-parallelism", "8", "--slurm-executor", "local"]
ABLATION = ["13", "--add", "--epochs", "2", "--seeds", "0-2", "--amp"]


def parsed(argv: list, ablate: bool = False) -> tuple:
    parser = train_command.build_parser(ablate)
    return parser, parser.parse_args(argv)


def test_the_round_trips_below_give_every_option_but_resume():
    """--resume continues one run, never a table, and --dry-run does nothing: no command is rebuilt from them."""
    given = {word for word in TABLE + SLURM + ABLATION if word.startswith("--")} | {"--procs", "--seeds"}
    options = {option for ablate in (False, True) for action in train_command.build_parser(ablate)._actions
               for option in action.option_strings}
    assert options - given == {"-h", "--help", "--resume", "--dry-run"}


@pytest.mark.parametrize("ablate, argv", [(False, ["1,3", "--seeds", "0,1", "--slurm-exec", "local"]),
                                          (True, ["13", "--ep", "2"])])
def test_an_abbreviated_option_is_a_usage_error(cli, ablate, argv):
    with pytest.raises(SystemExit) as refused:
        parsed(argv, ablate)
    assert refused.value.code == 2
    code, out, err = cli(*(["ablate"] if ablate else []), *argv)
    assert code == 2 and out == "" and err.count("error:") == 1, err
    assert f"unrecognized arguments: {' '.join(argv[-2:])}" in err.strip().splitlines()[-1]


def test_the_other_commands_take_no_abbreviation_either(cli):
    with pytest.raises(SystemExit):
        main.build_saved_run_parser("eval").parse_args(["run", "--dev", "cpu"])
    code, out, err = cli("status", "table", "--he")
    assert code == 2 and out == "" and "unrecognized arguments: --he" in err.strip().splitlines()[-1]


def test_a_slurm_tasks_command_parses_to_the_submitted_settings_without_the_submitters_own(tmp_path):
    parser, args = parsed(TABLE + SLURM)
    again = vars(parsed(slurm.task_argv(parser, args, tmp_path / "table", gpus=2))[1])
    assert again == {**vars(parsed(TABLE)[1]), "force": False, "retry_failed": False,
                     "out": str((tmp_path / "table").resolve()), "procs": 2}


def test_an_ablations_slurm_task_runs_the_same_ablation(tmp_path):
    parser, args = parsed([*ABLATION, "--data-dir", str(tmp_path), "--slurm", "--slurm-gpus", "1"], ablate=True)
    checks.check_training_args(parser, args)  # plans the arms, of versions 12 and 13
    words = slurm.task_argv(parser, args, tmp_path / "a", gpus=1)
    assert words[:3] == ["ablate", "13", "--add"]
    assert vars(parsed(words[1:], ablate=True)[1]) == vars(parsed(
        [*ABLATION, "--data-dir", str(tmp_path), "--out", str((tmp_path / "a").resolve())], ablate=True)[1])


def test_the_whole_split_command_parses_to_the_rows_settings_without_the_holdout():
    parser, args = parsed(TABLE + ["--procs", "2"])
    command = shlex.split(commands.whole_split_command(parser, args, {"version": 3, "settings": {"momentum": 0.9}}))
    assert command[:3] == ["python", "main.py", "3"]
    assert vars(parsed(command[2:])[1]) == {**vars(args), "versions": [3], "set": ["momentum=0.9"], "holdout": None,
                                            "holdout_seed": None, "out": None, "force": False, "retry_failed": False}


def test_the_command_that_continues_a_table_parses_to_its_settings_without_force(cli, tmp_path, monkeypatch):
    table = ["1", "--seeds", "0,1", "--epochs", "2", "--batch-size", "50", "--set", "lr=0.05,0.1", "--lease", "30",
             "--data-dir", str(make_mnist(tmp_path / "data")), "--fail-fast", "--quiet", "--force"]
    real_step, steps = train.train_step, []

    def stopped_at_the_sixth(*args):
        steps.append(1)
        if len(steps) > 5:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train, "train_step", stopped_at_the_sixth)
    code, _, err = cli(*table)
    assert code == 130, err
    command = shlex.split(err.strip().splitlines()[-1].split("Continue with: ", 1)[1])
    out = command[command.index("--out") + 1]
    assert command[:2] == ["python", "main.py"] and [Path(out).resolve()] == list((tmp_path / "runs").iterdir())
    assert vars(parsed(command[2:])[1]) == {**vars(parsed(table)[1]), "force": False, "out": out}
