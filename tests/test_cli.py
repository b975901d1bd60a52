"""The command line: usage, the version table, and one clear line with the right exit status for bad input."""
import re
from pathlib import Path

from runner import train_command
from configs import VERSIONS
from conftest import ROOT, make_image_folder


def test_bare_command_prints_usage_and_the_versions(cli):
    code, out, _ = cli()
    assert code == 0
    assert out.startswith("usage: main.py")
    assert "655,882" in out and "Fashion-MNIST" in out


def test_list_prints_every_version_with_params_and_reference_accuracy(cli):
    code, out, _ = cli("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["v", "dataset", "model", "optimizer", "batch"]
    text = " ".join(line.strip() for line in lines)  # remarks may be wrapped
    for row in VERSIONS.values():
        line = next(line for line in lines if line.split()[:1] == [str(row.number)])
        assert f"{row.params:,}" in line and row.remark in text
        if row.reference:
            digits = 2 if row.reference_source == "seed" else 4
            assert re.search(rf"\b{row.reference[0]:.{digits}f}\s+{row.reference[1]:.{digits}f}$", line)
    assert ("not measured yet" in text) == any(row.reference is None for row in VERSIONS.values())
    assert "the seed's published ones for 1-9" in text


def test_every_line_list_prints_fits_120_columns_and_each_version_starts_its_own(cli):
    code, out, _ = cli("list")
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120
    table = lines[1:lines.index("")]
    firsts = [line for line in table if not line.startswith(" ")]
    assert [line.split()[0] for line in firsts] == [str(number) for number in VERSIONS]
    assert all(line.startswith("    ") for line in table if line not in firsts)  # remarks, under the dataset


def test_help_lists_the_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for word in ("--epochs", "--resume", "eval RUN_DIR", "predict RUN_DIR", "--image-folder", "--loader"):
        assert word in out


def test_help_ends_with_where_the_docs_are(cli):
    for argv in (["--help"], ["ablate", "--help"]):
        code, out, _ = cli(*argv)
        assert code == 0
        last = out.rstrip().splitlines()[-4:]
        assert last[0] == "documentation, beside main.py:"
        named = [line.split()[0] for line in last[1:]]
        assert named == ["README.md", "docs/", "CHANGELOG.md"]
        assert all((ROOT / name).exists() for name in named)


def bad_command_lines(tmp: Path) -> list:
    a_file = tmp / "a-file"
    a_file.write_text("x")
    run_without_config = tmp / "empty-run"
    run_without_config.mkdir()
    half_folder = tmp / "half"
    (half_folder / "train").mkdir(parents=True)
    empty_train = tmp / "empty"
    (empty_train / "train").mkdir(parents=True)
    (empty_train / "test").mkdir()
    colour_folder = make_image_folder(tmp / "colour", train=10, test=10)
    return [
        (["16"], 2, "'16'"),
        (["0"], 2, "'0'"),
        (["nine"], 2, "'nine'"),
        (["1,x"], 2, "'1,x'"),
        (["7-3"], 2, "'7-3'"),
        (["1-16"], 2, "'1-16'"),
        (["1", "--epochs", "0"], 2, "'0'"),
        (["1", "--epochs", "two"], 2, "'two'"),
        (["1", "--batch-size", "-4"], 2, "'-4'"),
        (["1", "--lr", "0"], 2, "'0'"),
        (["1", "--lr", "nan"], 2, "'nan'"),
        (["1", "--lr", "inf"], 2, "'inf'"),
        (["1", "--lr", "-0.1"], 2, "'-0.1'"),
        (["1", "--seed", "-1"], 2, "'-1'"),
        (["1", "--seeds", "0,0"], 2, "'0,0'"),
        (["1", "--seeds", "0-2,1"], 2, "'0-2,1' repeats a seed"),
        (["1", "--seeds", "3-1"], 2, "'3-1' is an empty range"),
        (["1", "--seeds", "0-99999"], 2, "over 10,000 seeds"),
        (["1", "--set", "lr=fast"], 2, "--set lr=fast: give a number"),
        (["9", "--set", "whitening=true"], 2, "version 9 with whitening=true"),
        (["1", "--lr", "0.1", "--set", "lr=0.2"], 2, "give one of them"),
        (["1", "--seed", "1", "--seeds", "0,1"], 2, "--seeds"),
        (["1", "--device", "gpu"], 2, "'gpu'"),
        (["1", "--loader", "fast"], 2, "'fast'"),
        (["1", "--threads", "0"], 2, "'0'"),
        (["1", "--eval-every", "0"], 2, "'0'"),
        (["1", "--bogus"], 2, "--bogus"),
        (["1", "--image-folder", str(tmp / "nowhere")], 2, "nowhere"),
        (["1", "--image-folder", str(half_folder)], 2, "test/"),
        (["1,6", "--image-folder", str(half_folder)], 2, "half"),
        (["1,6", "--image-folder", str(empty_train)], 2, "no images"),
        (["1,2", "--image-folder", str(colour_folder)], 2, "none of the versions"),
        (["1", "--data-dir", str(a_file)], 2, "a-file"),
        (["1", "--out", str(a_file / "sub")], 2, "a-file"),
        (["1", "--out", str(a_file)], 2, "a-file"),
        (["--resume", str(tmp / "no-run")], 2, "no-run"),
        (["--resume", str(run_without_config)], 2, "config.json"),
        (["3", "--resume", str(run_without_config)], 2, "--resume"),
        (["--resume", str(run_without_config), "--lr", "0.1"], 2, "config.json"),
        (["eval", str(tmp / "no-run")], 2, "no-run"),
        (["eval", str(run_without_config)], 2, "config.json"),
        (["predict", str(run_without_config)], 2, "IMAGE"),
        (["list", "extra"], 2, "extra"),
        (["--epochs", "3"], 2, "versions"),
    ] + missing_devices()


def missing_devices() -> list:
    """Devices this machine lacks (none of them on a machine that has them all)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cases = [] if count else [(["1", "--device", "cuda"], 2, "cuda")]
    cases.append((["1", "--device", f"cuda:{count}"], 2, f"cuda:{count}"))
    if not torch.backends.mps.is_available():
        cases.append((["1", "--device", "mps"], 2, "mps"))
    return cases


def test_bad_command_lines_get_one_line_and_exit_2(cli, tmp_path):
    cases = bad_command_lines(tmp_path)
    assert len(cases) >= 20
    for argv, status, named in cases:
        code, out, err = cli(*argv)
        assert code == status, (argv, code, err)
        assert "Traceback" not in err + out, argv
        message = err.strip().splitlines()[-1]
        assert named in message, (argv, message)


def test_nothing_is_loaded_or_written_for_bad_input(cli, tmp_path):
    code, _, _ = cli("1", "--epochs", "0", "--data-dir", tmp_path / "fresh-data")
    assert code == 2
    assert not (tmp_path / "fresh-data").exists() and not (tmp_path / "runs").exists()


def test_resume_accepts_only_epochs_device_threads_and_quiet(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    code, _, err = cli("--resume", run, "--batch-size", "8")
    assert code == 2 and "--batch-size cannot change when resuming" in err
    code, _, err = cli("--resume", run, "--seed", "0")  # zero is a value given, not an absent one
    assert code == 2 and "--seed cannot change when resuming" in err


def test_a_device_list_is_checked_before_any_process_starts(cli, tmp_path):
    code, _, err = cli("1,2", "--device", "cuda:0,cuda:99", "--out", tmp_path / "table")  # cuda:99 exists nowhere
    assert code == 2 and "--device cuda:" in err.strip().splitlines()[-1] and "CUDA" in err.strip().splitlines()[-1]
    assert not (tmp_path / "table").exists()


def test_eval_and_predict_take_one_device(cli, tmp_path):
    code, _, err = cli("eval", tmp_path, "--device", "cuda:0,cuda:1")
    assert code == 2 and "give one device" in err.strip().splitlines()[-1]


def test_seeds_take_lists_and_ranges():
    assert train_command.seed_list("0-4") == [0, 1, 2, 3, 4]
    assert train_command.seed_list("0-2,7") == [0, 1, 2, 7]
    assert train_command.seed_list("5") == [5]
