"""An exported model put to use without torch: `main.py predict RUN_DIR IMAGE... --onnx` runs the run folder's
model.onnx in ONNX Runtime, decoding each image as `predict` does and doing the recipe's test-time augmentation in
numpy, so that it answers as `predict` does."""
import json
from pathlib import Path

import numpy as np

from runner.errors import RunnerError
from runner.images import decode_image
from runner.records import CHECKPOINT, MODEL


def stale_export(run_dir: Path) -> str | None:
    """Why the run's model.onnx cannot stand for the run (never exported, or older than its checkpoint), or None."""
    model, checkpoint = run_dir / MODEL, run_dir / CHECKPOINT
    if not model.is_file():
        return f"{run_dir} has no {MODEL}: export it first (python main.py export {run_dir})"
    if checkpoint.is_file() and checkpoint.stat().st_mtime_ns > model.stat().st_mtime_ns:
        return f"{model} is older than the run's checkpoint (the run trained on after the export): export it again"
    return None


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
    """The top classes with probabilities for each image file, from the run's model.onnx alone."""
    import onnxruntime

    why = stale_export(run_dir)
    if why:
        raise RunnerError(why)
    session = onnxruntime.InferenceSession(str(run_dir / MODEL), providers=["CPUExecutionProvider"])
    facts = session.get_modelmeta().custom_metadata_map
    classes = json.loads(facts["classes"])
    channels, size = session.get_inputs()[0].shape[1:3]
    pixels = np.stack([decode_image(path, channels, size, resize=True) for path in images])
    tta = "none" if facts["tta_inside"] == "true" else facts["tta"]
    probabilities = np.exp(with_tta(lambda batch: session.run(None, {"pixels": batch})[0], pixels, tta))
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :min(top, len(classes))]
    return [[(classes[index], float(row[index])) for index in order] for row, order in zip(probabilities, best)]
