"""scripts/frontier.py: the commands it runs, and the picture and tables it draws from results folders."""
import csv
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import frontier  # noqa: E402

RUNS = {  # line -> [(epochs, seed, accuracy, seconds)]
    "v13": [(4, 0, 0.880, 400), (4, 1, 0.884, 410), (4, 2, 0.882, 405), (10, 0, 0.907, 1000), (10, 1, 0.905, 1010),
         (10, 2, 0.909, 990)],
    "v14": [(4, 0, 0.890, 420), (4, 1, 0.894, 415), (4, 2, 0.892, 425), (8, 0, 0.906, 830)],
}


def write_runs(out):
    for line, runs in RUNS.items():
        folder = out / line
        folder.mkdir(parents=True)
        with open(folder / "runs.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["version", "arm", "seed", "train_acc", "test_acc", "val_acc", "seconds", "status",
                             "folder"])
            for epochs, seed, accuracy, seconds in runs:
                writer.writerow([line[1:3], f"epochs={epochs}", seed, 0.9, accuracy, "", seconds, "ok", "x"])
            writer.writerow([line[1:3], "epochs=6", 0, "", "", "", "", "not trained yet", "x"])


def test_the_tables_give_each_budgets_mean_interval_and_the_best_recipe_within_each_budget(tmp_path):
    write_runs(tmp_path)
    rows = frontier.summary(frontier.points(tmp_path))
    assert [(row["line"], row["epochs"], row["seeds"]) for row in rows] == [("v14", 4, 3), ("v14", 8, 1),
                                                                            ("v13", 4, 3), ("v13", 10, 3)]
    assert rows[2]["accuracy"] == pytest.approx(0.882) and rows[2]["low"] < 0.882 < rows[2]["high"]
    assert rows[1]["low"] is None  # one seed: no interval
    assert frontier.best_within(rows, 7)["line"] == "v14"  # 0.892 in 420 s beats 0.882 in 405 s
    assert frontier.best_within(rows, 15)["epochs"] == 8 and frontier.best_within(rows, 5) is None
    text = frontier.markdown(rows)
    assert "| version 13 | 4 | 3 | 0.8820 [" in text and "| 5 min | none measured |" in text
    assert "| 20 min | version 13, 10 epochs: 0.9070 in 1,000 s |" in text


def test_a_line_of_settings_beside_the_epochs_is_drawn_from_its_folder(tmp_path):
    write_runs(tmp_path)
    (tmp_path / "v13").rename(tmp_path / "v14-narrow")
    rows = frontier.summary(frontier.points(tmp_path))
    assert [row["line"] for row in rows] == ["v14", "v14", "v14-narrow", "v14-narrow"]
    assert "| 14, blocks 64/128/128 | 10 | 3 | 0.9070 [" in frontier.markdown(rows)


def test_draw_writes_the_picture_and_needs_finished_runs(tmp_path):
    picture = tmp_path / "frontier.png"
    empty = subprocess.run([sys.executable, str(ROOT / "scripts" / "frontier.py"), "draw", "--out", tmp_path,
                            "--picture", picture], capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no finished runs" in empty.stderr
    write_runs(tmp_path)
    drawn = subprocess.run([sys.executable, str(ROOT / "scripts" / "frontier.py"), "draw", "--out", tmp_path,
                            "--picture", picture], capture_output=True, text=True, timeout=60)
    assert drawn.returncode == 0, drawn.stderr
    assert picture.read_bytes().startswith(b"\x89PNG") and "| budget |" in drawn.stdout


def test_run_trains_each_lines_budgets_over_three_seeds_into_a_folder_it_resumes(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(frontier.subprocess, "run", lambda command: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    args = frontier.build_parser().parse_args(["run", "--image-folder", "images", "--out", str(tmp_path),
                                               "--lines", "v13,v14-narrow"])
    assert frontier.run(args) == 0
    assert [command[2:] for command in commands] == [
        ["14", "--set", "model.widths=64x128x128", "--set", "epochs=8,12,14", "--seeds", "0-2", "--image-folder",
         "images", "--out", str(tmp_path / "v14-narrow"), "--quiet"],
        ["13", "--set", "epochs=2,4,6", "--seeds", "0-2", "--image-folder", "images", "--out", str(tmp_path / "v13"),
         "--quiet"]]
    with pytest.raises(SystemExit):
        frontier.build_parser().parse_args(["run", "--image-folder", "images", "--out", "x", "--lines", "v15"])
