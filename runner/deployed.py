"""An exported model put to use without torch: `main.py predict RUN_DIR IMAGE... --onnx` runs the run folder's
model.onnx in ONNX Runtime, decoding each image as `predict` does and doing the recipe's test-time augmentation in
numpy, so that it answers as `predict` does."""
import json
from pathlib import Path

import numpy as np

from runner.errors import RunnerError
from runner.images import decode_image
from runner.records import CHECKPOINT, MODEL
from runner.settings import TOOL


def stale_export(run_dir: Path) -> str | None:
    """Why the run's model.onnx cannot stand for the run (never exported, or older than its checkpoint), or None."""
    model, checkpoint = run_dir / MODEL, run_dir / CHECKPOINT
    if not model.is_file():
        return f"{run_dir} has no {MODEL}: export it first (python main.py export {run_dir})"
    if checkpoint.is_file() and checkpoint.stat().st_mtime_ns > model.stat().st_mtime_ns:
        return f"{model} is older than the run's checkpoint (the run trained on after the export): export it again"
    return None


def is_ours(path: Path) -> bool:
    """An existing ONNX file that this tool wrote (so export may replace it)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything unreadable is nobody's export of ours
        return False
    return any(entry.key == "tool" and entry.value == TOOL for entry in model.metadata_props)


def open_export(path: Path):
    """(an ONNX Runtime session of an export of ours, its metadata); RunnerError with what to do otherwise."""
    try:
        import onnxruntime
    except ImportError:
        raise RunnerError("predict --onnx needs onnxruntime: pip install onnxruntime") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for a damaged file
        raise RunnerError(f"{path} cannot be read as an ONNX model ({type(error).__name__}): export the run "
                          "again") from None
    facts = session.get_modelmeta().custom_metadata_map
    if facts.get("tool") != TOOL or not {"classes", "tta", "tta_inside"} <= facts.keys():
        raise RunnerError(f"{path} was not written by main.py export: export the run again")
    return session, facts


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def with_tta(run, pixels: np.ndarray, tta: str) -> np.ndarray:
    """Log-probabilities of uint8 pixels (N, C, H, W) through `run` (pixels -> log-probabilities), averaged as
    train.tta_output averages them: over the image and its mirror, and for mirror+shift also over both shifted one
    pixel diagonally each way (reflect padding)."""
    if tta == "none":
        return run(pixels)

    def mirrored(batch):
        return (run(batch) + run(np.ascontiguousarray(batch[..., ::-1]))) / 2

    output = mirrored(pixels)
    if tta == "mirror+shift":
        height, width = pixels.shape[-2:]
        padded = np.pad(pixels, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        shifted = (mirrored(np.ascontiguousarray(padded[..., :height, :width]))
                   + mirrored(np.ascontiguousarray(padded[..., 2:, 2:]))) / 2
        output = (output + shifted) / 2
    return log_softmax(output)


def answer_line(image: str, best: list) -> str:
    """How predict prints an image's top classes, with either engine."""
    return f"{image}: " + ", ".join(f"{name} {probability:.4f}" for name, probability in best)


def predict(run_dir: Path, images: list, top: int = 3) -> list:
    """The top classes with probabilities for each image file, from the run's model.onnx alone (which the command
    line has checked with stale_export)."""
    session, facts = open_export(run_dir / MODEL)
    classes = json.loads(facts["classes"])
    channels, size = session.get_inputs()[0].shape[1:3]
    pixels = np.stack([decode_image(path, channels, size, resize=True) for path in images])
    tta = "none" if facts["tta_inside"] == "true" else facts["tta"]
    probabilities = np.exp(with_tta(lambda batch: session.run(None, {"pixels": batch})[0], pixels, tta))
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :min(top, len(classes))]
    return [[(classes[index], float(row[index])) for index in order] for row, order in zip(probabilities, best)]
