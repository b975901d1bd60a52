"""main.py export: a run's model as ONNX, checked in ONNX Runtime; predict --onnx answers as predict does, without
torch."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from conftest import ROOT, make_image_folder, make_mnist


def trained(cli, tmp_path, version: str, *data) -> object:
    run = tmp_path / f"v{version}"
    code, _, err = cli(version, "--epochs", 1, "--batch-size", 20, *data, "--out", run, "--quiet")
    assert code == 0, err
    return run


def metadata(path) -> dict:
    return {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("version", ["1", "3", "4", "7", "13"])  # one per model family
@pytest.mark.slow
def test_each_model_family_exports_and_agrees_with_pytorch(cli, tmp_path, version):
    data = ["--data-dir", make_mnist(tmp_path / "data", "FashionMNIST")] if int(version) < 6 else \
        ["--image-folder", make_image_folder(tmp_path / "images", train=40, test=20)]
    if version == "1":
        data = ["--data-dir", make_mnist(tmp_path / "data")]
    run = trained(cli, tmp_path, version, *data)
    code, out, err = cli("export", run)
    assert code == 0, err
    difference = float(out.split("largest difference of probabilities ")[1].split(",")[0])
    assert difference <= 1e-4 and "top-1 agreement 1.0000" in out
    facts = metadata(run / "model.onnx")
    channels, size = (1, 28) if int(version) < 6 else (3, 32)
    assert facts["input"] == f"uint8 N x {channels} x {size} x {size}" and facts["version"] == version
    assert json.loads(facts["classes"]) == json.loads((run / "config.json").read_text())["classes"]
    session = onnxruntime.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # the batch dimension is free
        pixels = np.random.default_rng(batch).integers(0, 256, (batch, channels, size, size), dtype=np.uint8)
        probabilities = np.exp(session.run(None, {"pixels": pixels})[0])
        assert probabilities.shape == (batch, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def write_images(tmp_path, count: int, size: int, mode: str) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        shape = (size + 5, size + 3) + (() if mode == "L" else (3,))
        path = tmp_path / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.slow
def test_tta_in_the_graph_and_in_numpy_answer_as_predict_does_and_onnx_predict_imports_no_torch(cli, tmp_path):
    # fp32, as the export computes: a bfloat16 run's own predict differs from its export in the third decimal
    run = trained(cli, tmp_path, "13", "--image-folder", make_image_folder(tmp_path / "images", train=40, test=20),
                  "--no-amp")
    images = write_images(tmp_path, 3, 32, "RGB")
    code, expected, err = cli("predict", run, *images)
    assert code == 0, err
    assert cli("export", run)[0] == 0  # test-time augmentation outside the graph: done in numpy by predict --onnx
    probe = ("import sys; sys.path.insert(0, {root!r}); import main; code = main.main({argv!r}); "
             "print('torch imported:', 'torch' in sys.modules); sys.exit(code)").format(
        root=str(ROOT), argv=["predict", str(run), *images, "--onnx"])
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:-1] == expected.splitlines()
    assert "torch imported: False" in result.stdout
    code, out, err = cli("export", run, "--tta", "--onnx-out", tmp_path / "inside.onnx")
    assert code == 0 and "top-1 agreement 1.0000" in out, err
    assert metadata(tmp_path / "inside.onnx")["tta_inside"] == "true"
    assert metadata(run / "model.onnx")["tta"] == "mirror+shift"


def test_bad_exports_are_one_line_and_leave_nothing_behind(cli, tmp_path):
    run = trained(cli, tmp_path, "1", "--data-dir", make_mnist(tmp_path / "data"))
    image = write_images(tmp_path, 1, 28, "L")
    code, _, err = cli("predict", run, *image, "--onnx")
    assert code == 2 and "no model.onnx: export it first" in err
    theirs = tmp_path / "theirs.onnx"
    theirs.write_bytes(b"somebody's model")
    code, _, err = cli("export", run, "--onnx-out", theirs)
    assert code == 2 and "was not written by this tool" in err and theirs.read_bytes() == b"somebody's model"
    code, _, err = cli("export", tmp_path / "data")
    assert code == 2 and "not a finished run folder" in err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((run / "config.json").read_text())
    code, _, err = cli("export", unfinished)
    assert code == 2 and "no checkpoint.pt in it" in err
    (run / "checkpoint.pt").write_bytes(b"damaged")
    code, _, err = cli("export", run)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(path.name for path in run.iterdir() if path.name.startswith(".")) == []


def test_an_onnx_file_that_is_not_an_export_is_one_line(cli, tmp_path):
    run = trained(cli, tmp_path, "1", "--data-dir", make_mnist(tmp_path / "data"))
    image = write_images(tmp_path, 1, 28, "L")
    (run / "model.onnx").write_bytes(b"not a model")  # newer than the checkpoint, but no model
    code, _, err = cli("predict", run, *image, "--onnx")
    assert code == 1 and "cannot be read as an ONNX model" in err and "Traceback" not in err
    code, out, err = cli("export", run, "--onnx-out", tmp_path / "new" / "folder" / "m.onnx")
    assert code == 0 and (tmp_path / "new" / "folder" / "m.onnx").exists(), err


def test_an_export_that_disagrees_with_pytorch_is_one_line_and_writes_nothing(cli, tmp_path, monkeypatch):
    from runner import export

    run = trained(cli, tmp_path, "1", "--data-dir", make_mnist(tmp_path / "data"))
    monkeypatch.setattr(export, "TOLERANCE", 0.0)  # float32 kernels always differ in their last bits
    code, out, err = cli("export", run)
    assert code == 1 and "disagrees with PyTorch" in err and "nothing was written" in err
    assert not (run / "model.onnx").exists() and not any(path.name.startswith(".") for path in run.iterdir())
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = cli("export", run, "--onnx-out", a_file / "model.onnx")
    assert code == 2 and "exists and is not a folder" in err


@pytest.mark.slow
def test_an_export_older_than_the_checkpoint_is_refused(cli, tmp_path):
    data = make_mnist(tmp_path / "data")
    run = trained(cli, tmp_path, "1", "--data-dir", data)
    assert cli("export", run)[0] == 0
    assert cli("--resume", run, "--epochs", 2, "--quiet")[0] == 0
    code, _, err = cli("predict", run, *write_images(tmp_path, 1, 28, "L"), "--onnx")
    assert code == 2 and "older than the run's checkpoint" in err
