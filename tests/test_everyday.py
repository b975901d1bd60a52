"""Everyday use: TensorBoard logs, a start-up that imports only what the first step needs, image folders of any
size (--resize), the mistakes a saved run makes, and pictures laid out whatever their labels."""
import csv
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from runner import records
import forked
from conftest import ROOT, make_image_folder, make_mnist, read_metrics
from data import DataSource, load_split
from runner import plots
from runner.plots import select_mistakes

PNG = b"\x89PNG\r\n\x1a\n"


def read_scalars(path) -> dict:
    """tag -> [(step, value)] as TensorBoard reads a run folder (stale points of crashed sessions dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def assert_log_matches_metrics(run, split: str = "test"):
    scalars = read_scalars(run)
    rows = read_metrics(run)
    for tag, column in (("train/loss", "train_loss"), ("train/accuracy", "train_acc"),
                        (f"{split}/loss", f"{split}_loss"), (f"{split}/accuracy", f"{split}_acc"), ("lr", "lr"),
                        ("time/epoch_seconds", "seconds")):
        values = [value for _, value in scalars[tag]]
        assert values == [np.float32(float(row[column])) for row in rows], tag
    steps = [step for step, _ in scalars["train/loss"]]
    assert steps == sorted(set(steps)) and len(steps) == len(rows)  # one point per epoch, on the global step
    assert all(step <= steps[-1] for step, _ in scalars["train/running_loss"])


def test_tensorboard_events_equal_metrics_csv(cli, mnist_dir, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("1", "--epochs", 3, "--batch-size", 16, "--data-dir", mnist_dir, "--out", run, "--quiet")
    assert code == 0, err
    assert_log_matches_metrics(run)
    assert (run / "hparams").is_dir()


def test_tensorboard_shows_a_held_out_runs_validation_and_no_test(cli, mnist_dir, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("1", "--holdout", 40, "--epochs", 2, "--batch-size", 16, "--data-dir", mnist_dir, "--out", run,
                       "--quiet")
    assert code == 0, err
    assert_log_matches_metrics(run, "val")
    assert not any(tag.startswith("test/") for tag in read_scalars(run))


FAULT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train
from runner import records
real_save, real_step, steps = records.RunFolder.save_checkpoint, train.train_step, []

def crash(folder, state):  # the epoch was logged, but is not kept
    raise OSError(28, "No space left on device")

def stop(*args):  # a signal in the middle of an epoch
    steps.append(1)
    if len(steps) == 20:
        os.kill(os.getpid(), signal.SIGINT)
    return real_step(*args)

if {fault!r} == "crash":
    records.RunFolder.save_checkpoint = crash
elif {fault!r} == "stop":
    train.train_step = stop
import main
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_runs_stopped_crashed_and_resumed_log_each_epoch_once(tmp_path):
    """Each session is a process of its own, as in real use: TensorBoard orders a folder's event files by the
    time and process in their names."""
    data, run = make_mnist(tmp_path / "data"), tmp_path / "run"

    def session(fault, *argv):
        command = [sys.executable, "-c", FAULT.format(root=str(ROOT), fault=fault), *map(str, argv), "--quiet"]
        return forked.run(command, timeout=120)

    stopped = session("stop", "1", "--epochs", 3, "--batch-size", 16, "--data-dir", data, "--out", run)
    assert stopped.returncode == 130 and records.load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    crashed = session("crash", "--resume", run)
    assert crashed.returncode == 1 and "No space left" in crashed.stderr
    assert session(None, "--resume", run).returncode == 0
    assert [row["epoch"] for row in read_metrics(run)] == ["1", "2", "3"]
    assert_log_matches_metrics(run)


STARTUP_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
import train

def first_step(*args):
    heavy = sorted(name for name in ("torchvision", "matplotlib", "tensorboard", "torch.utils.tensorboard", "PIL",
                                     "scipy")
                   if name in sys.modules)
    print("imported before the first step:", heavy, flush=True)
    os._exit(0)

train.train_step = first_step
import main
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_path_to_the_first_step_imports_no_torchvision_matplotlib_or_tensorboard(cli, tmp_path):
    data = make_mnist(tmp_path / "data")
    argv = ["1", "--epochs", "1", "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    code, _, err = cli(*argv, "--out", tmp_path / "a")  # decodes the dataset into the cache, as a first run does
    assert code == 0, err
    probed = subprocess.run([sys.executable, "-c", STARTUP_PROBE.format(root=str(ROOT)), *argv, "--threads", "1",
                             "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert probed.returncode == 0, probed.stderr
    assert "imported before the first step: []" in probed.stdout


def test_list_help_status_and_usage_errors_import_no_torch():
    for argv in (["list"], ["--help"], ["1", "--epochs", "0"], ["status", str(ROOT)]):
        probe = ("import sys; sys.path.insert(0, {root!r}); import main; code = main.main({argv!r}); "
                 "print('torch imported:', 'torch' in sys.modules)").format(root=str(ROOT), argv=argv)
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert "torch imported: False" in result.stdout, (argv, result.stdout, result.stderr)


def test_resize_makes_a_folder_of_any_size_usable(cli, tmp_path):
    folder = make_image_folder(tmp_path / "big", size=40, train=40, test=20)
    code, _, err = cli("6", "--epochs", 1, "--image-folder", folder, "--out", tmp_path / "refused", "--quiet")
    assert code == 1 and "is 40x40 but this version takes 32x32" in err and "--resize" in err
    code, _, err = cli("6", "--epochs", 1, "--resize", "--image-folder", folder, "--out", tmp_path / "run",
                       "--quiet")
    assert code == 0, err
    resized = load_split(DataSource("cifar10", "unused", str(folder), str(tmp_path / "c"), resize=True), False)
    first = sorted((folder / "test").rglob("*.png"))[0]
    expected = np.asarray(Image.open(first).convert("RGB").resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert resized.images.shape[1:] == (3, 32, 32) and torch.equal(resized.images[0], torch.from_numpy(expected))


def test_resize_in_a_table_serves_every_version_at_its_own_size(cli, tmp_path):
    folder = make_image_folder(tmp_path / "big", size=40, train=40, test=20)
    table = tmp_path / "table"
    code, _, err = cli("1,6", "--epochs", 1, "--resize", "--image-folder", folder, "--out", table, "--quiet")
    assert code == 0, err
    with open(table / "results.csv", newline="") as f:
        assert [row["dataset"] for row in csv.DictReader(f)] == ["mnist (folder: big)", "cifar10 (folder: big)"]
    code, out, err = cli("predict", table / "v1", sorted((folder / "test").rglob("*.png"))[0])
    assert code == 0, err
    assert [name.split()[0][:5] for name in out.split(": ", 1)[1].split(", ")] == ["class"] * 3


def test_resize_needs_an_image_folder(cli):
    code, _, err = cli("1", "--resize")
    assert code == 2 and "--image-folder" in err.strip().splitlines()[-1]


@pytest.mark.pictures
def test_eval_writes_the_most_confident_mistakes(cli, image_folder, tmp_path):
    run = tmp_path / "run"
    assert cli("7", "--epochs", 1, "--image-folder", image_folder, "--out", run, "--quiet")[0] == 0
    code, out, err = cli("eval", run, "--quiet")
    assert code == 0, err
    accuracy = float(out.split("Test Acc: ")[1].split()[0])
    line = next(line for line in out.splitlines() if line.startswith("Mistakes: "))
    wrong, total = int(line.split()[1]), int(line.split()[3])
    assert total == 30 and wrong == round((1 - accuracy) * total)
    assert f"the {min(wrong, 64)} most confident" in line
    assert (run / "mistakes.png").read_bytes().startswith(PNG)


def test_an_eval_stopped_by_ctrl_c_says_only_that_it_was_interrupted(cli, image_folder, tmp_path, monkeypatch):
    from runner import saved

    run = tmp_path / "run"
    assert cli("7", "--epochs", 1, "--image-folder", image_folder, "--out", run, "--quiet")[0] == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(saved, "evaluate", interrupted)
    code, out, err = cli("eval", run, "--quiet")
    assert code == 130 and err.strip().splitlines()[-1] == "error: interrupted" and "Run folder" not in out


def test_mistakes_are_the_wrong_predictions_most_confident_first():
    outputs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]]).log()
    labels = torch.tensor([1, 1, 1, 0, 0])
    chosen = select_mistakes(outputs, labels, limit=3)
    assert [(index, predicted) for index, predicted, _ in chosen] == [(0, 0), (3, 1), (2, 0)]
    assert [probability for _, _, probability in chosen] == pytest.approx([0.9, 0.7, 0.6])


def test_the_mistakes_pictures_title_stays_above_its_images():
    """A grid of eight rows is 18 inches tall: its title was drawn over the first row's images and captions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    shown = 64
    images = torch.zeros((shown, 3, 32, 32), dtype=torch.uint8)
    labels = torch.zeros(shown, dtype=torch.long)
    title = "Version 13: the most confident mistakes"
    figure = plots.mistakes_figure(images, labels, [(index, 1, 0.99) for index in range(shown)],
                                   ["cat", "dog"], title)
    plots.save(figure, io.BytesIO())
    renderer = FigureCanvasAgg(figure).get_renderer()  # save closed the figure's own canvas
    drawn = figure.findobj(lambda artist: isinstance(artist, Text) and artist.get_text() == title)[0]
    title_box, grid_box = drawn.get_window_extent(renderer), figure.axes[0].get_window_extent(renderer)
    assert grid_box.y1 <= title_box.y0 and title_box.y1 <= figure.bbox.y1


@pytest.mark.parametrize("draw", [
    lambda label: plots.results_figure({"CIFAR-10": {label: ([1, 2], [0.5, 0.6]), "v11": ([1, 2], [0.4, 0.5])}}),
    lambda label: plots.differences_figure([(f"{label} - v11", 0.01, -0.01, 0.02), ("v12 - v11", 0.02, 0.0, 0.04)]),
], ids=["results", "differences"])
def test_pictures_are_laid_out_around_an_arm_named_in_150_characters(draw):
    """matplotlib warned "Tight layout not applied" on stderr and drew the plot squeezed or cut off."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.save(draw("W" * 150), io.BytesIO())


def test_eval_tests_a_run_with_another_test_time_augmentation_on_request(cli, image_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    code, out, err = cli("7", "--epochs", 1, "--set", "tta=mirror+shift", "--image-folder", image_folder, "--out", run,
                         "--quiet")
    assert code == 0, err
    with open(run / "metrics.csv", newline="") as f:
        plain = float(list(csv.DictReader(f))[-1]["test_acc"])  # an epoch's test has no augmentation
    final = float(out.split("Test Acc: ")[-1].split()[0])
    titles, draw = [], plots.confusion_figure
    monkeypatch.setattr(plots, "confusion_figure", lambda *args: titles.append(args[2]) or draw(*args))
    code, out, err = cli("eval", run, "--quiet")
    assert code == 0 and f"Test Acc: {final:.4f} (test-time augmentation: mirror and 1-pixel shifts)" in out, err
    code, out, err = cli("eval", run, "--quiet", "--tta", "none")
    assert code == 0 and f"Test Acc: {plain:.4f}\n" in out, err
    code, out, err = cli("eval", run, "--quiet", "--tta", "mirror")
    assert code == 0 and "(test-time augmentation: mirror)" in out, err
    # the pictures it draws again say when they are not of the recipe's own test
    assert titles == ["Version 7", "Version 7, tested with test-time augmentation none",
                      "Version 7, tested with test-time augmentation mirror"]
    code, _, err = cli("eval", run, "--tta", "shift")
    assert code == 2 and "--tta" in err
