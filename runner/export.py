"""A trained run as an ONNX file that needs neither this project nor PyTorch: `main.py export RUN_DIR`.

The graph takes the run's pixels as they are stored (uint8, N x C x H x W, grey or RGB, the version's size) and
gives the class log-probabilities: the scaling to [0, 1] and the fitted input layers (normalisation, patch
whitening) are inside it, in float32 whatever numerics the run trained in. The batch dimension is dynamic. The
file's metadata says what a client needs to feed it. The export checks itself in ONNX Runtime against PyTorch.
"""
import contextlib
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from data import load_split
from runner.errors import DataError, RunnerError
from runner.files import atomic_write
from runner.records import MODEL, RunFolder
from runner.sources import DataSource
from runner.saved import load_trained
from runner.settings import DATASETS, TOOL, RunConfig
from train import tta_output

OPSET = 18  # pinned, so a file exported today opens in the same runtimes tomorrow
MODEL_FILE = MODEL
CHECKED_IMAGES = 256
TOLERANCE = 1e-4  # the largest difference of probabilities allowed between ONNX Runtime and PyTorch


class PixelModel(nn.Module):
    """A trained model behind the scaling a client would otherwise have to repeat: uint8 pixels in, class
    log-probabilities out, with the recipe's test-time augmentation when `tta` is not "none"."""

    def __init__(self, model: nn.Module, tta: str):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return tta_output(self.model, pixels.float() / 255, self.tta)


def metadata(run: RunConfig, state: dict, tta_inside: bool) -> dict:
    """What a client needs to know to feed the graph and read its answer, as ONNX metadata (strings); state: the
    run's checkpoint."""
    channels, size = DATASETS[run.dataset].channels, DATASETS[run.dataset].size
    return {"tool": TOOL, "version": str(run.version), "classes": json.dumps(list(state["classes"])),
            "input": f"uint8 N x {channels} x {size} x {size}", "colour": "grey" if channels == 1 else "RGB",
            "scaling": "inside the graph: pixels / 255, then the version's fitted input layers",
            "resize": f"to {size}x{size}, bilinear with antialiasing (PIL's Image.resize), aspect ratio not kept",
            "output": "class log-probabilities, N x classes",
            "tta": run.recipe.tta, "tta_inside": "true" if tta_inside else "false",
            "epoch": str(state["epoch"]), "step": str(state.get("step", "")), "opset": str(OPSET)}


def check_images(run: RunConfig, source: DataSource) -> tuple[torch.Tensor, str]:
    """A batch of the run's test images to check the export on, or synthetic ones when its data is absent."""
    try:
        images = load_split(source, train=False).images[:CHECKED_IMAGES]
        return images, f"{len(images)} test images"
    except (DataError, RunnerError):
        channels, size = DATASETS[run.dataset].channels, DATASETS[run.dataset].size
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (CHECKED_IMAGES, channels, size, size), dtype=torch.uint8,
                               generator=generator)
        return images, f"{CHECKED_IMAGES} synthetic images (the run's test split is not at hand)"


@torch.no_grad()
def export_run(folder: RunFolder, run: RunConfig, out: Path, tta: bool, source: DataSource) -> dict:
    """Write the run's model to `out` (through a temporary file) and check it in ONNX Runtime against PyTorch:
    {"difference": largest difference of probabilities, "agreement": share of equal top-1 classes, "images": what
    was checked}. RunnerError when they disagree; nothing is left at `out` then."""
    import onnx
    import onnxruntime

    state = folder.load_checkpoint()
    model, _ = load_trained(folder, run, torch.device("cpu"), state)
    model = model.to(memory_format=torch.contiguous_format).float().eval()
    wrapped = PixelModel(model, run.recipe.tta if tta else "none").eval()
    images, what = check_images(run, source)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (images[:2],), dynamo=True, input_names=["pixels"],
                                    output_names=["log_probabilities"], opset_version=OPSET,
                                    dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}}, verbose=False)
    graph = program.model_proto
    for key, value in metadata(run, state, tta).items():
        graph.metadata_props.add(key=key, value=value)
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = torch.from_numpy(session.run(None, {"pixels": images.numpy()})[0]).exp()
    theirs = wrapped(images).exp()
    difference = (ours - theirs).abs().max().item()
    agreement = (ours.argmax(dim=1) == theirs.argmax(dim=1)).float().mean().item()
    if difference > TOLERANCE or agreement < 1:
        raise RunnerError(f"the exported model disagrees with PyTorch on {what} (largest difference of "
                          f"probabilities {difference:.2e}, allowed {TOLERANCE:g}; top-1 agreement {agreement:.4f}): "
                          "nothing was written; please report it with the run's version")
    atomic_write(out, lambda f: f.write(graph.SerializeToString()), verify=lambda path: onnx.checker.check_model(
        str(path)))
    return {"difference": difference, "agreement": agreement, "images": what}
