"""A saved run put to use: test it again (eval) or classify images with it (predict), with the test-time
augmentation of its recipe and in its numerics (bfloat16 autocast for an --amp run, as its tests had)."""
import torch
from torch import nn

from runner import plots
from data import check_classes, load_image, load_split
from runner.errors import CheckpointError
from runner.loaders import BatchPlan, ResidentLoader, eval_batch_size
from models import build_model
from runner.records import CONFUSION, MISTAKES, RunFolder
from runner.settings import DATASETS, RunConfig
from runner.sources import DataSource
from train import TTA_NAMES, autocast, evaluate, on_device, tta_output, uses_channels_last

MISTAKES_SHOWN = 64


def load_trained(folder: RunFolder, run: RunConfig, device: torch.device,
                 state: dict | None = None) -> tuple[nn.Module, list]:
    """A saved run's model with the last checkpoint's weights (in eval mode), and its class names; `state`: the
    checkpoint, when the caller has read it already."""
    state = state or folder.load_checkpoint()
    model = build_model(run.recipe, DATASETS[run.dataset].channels, len(state["classes"]))
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"{folder.path / 'checkpoint.pt'} does not fit version {run.version}'s model "
                              f"({type(error).__name__}): train again in a new folder") from None
    return on_device(model, device).eval(), list(state["classes"])


def evaluate_run(folder: RunFolder, run: RunConfig, device: torch.device, source: DataSource, quiet: bool,
                 tta: str) -> dict:
    """Test a saved run on its test split with test-time augmentation `tta` (its recipe's unless asked otherwise):
    loss, accuracy, per-class accuracy, confusion.png, and mistakes.png with the most confident mistakes (their
    titles name another augmentation than the recipe's, since they replace the pictures of the run's own test)."""
    model, classes = load_trained(folder, run, device)
    test = load_split(source, train=False)
    check_classes(classes, test.classes, source.name)
    loader = ResidentLoader(test, BatchPlan(len(test.labels), eval_batch_size(run.recipe)), device)
    result = evaluate(model, loader, device, run.identity.amp, quiet, len(classes), tta=tta, keep_outputs=True)
    per_class = (result.confusion.diag() / result.confusion.sum(dim=1).clamp(min=1)).tolist()
    title = f"Version {run.version}" + ("" if tta == run.recipe.tta else f", tested with test-time augmentation {tta}")
    folder.write_picture(CONFUSION, lambda f: plots.save(plots.confusion_figure(result.confusion, classes, title), f))
    mistakes = plots.select_mistakes(result.outputs, test.labels, MISTAKES_SHOWN)
    folder.write_picture(MISTAKES, lambda f: plots.save(plots.mistakes_figure(
        test.images, test.labels, mistakes, classes, f"{title}: the most confident mistakes"), f))
    wrong = int(result.confusion.sum() - result.confusion.trace())
    return dict(loss=result.loss, accuracy=result.accuracy, per_class=dict(zip(classes, per_class)),
                tta=TTA_NAMES.get(tta), wrong=wrong, shown=len(mistakes), total=len(test.labels))


@torch.no_grad()
def predict(folder: RunFolder, run: RunConfig, images: list, device: torch.device, top: int = 3) -> list:
    """The top classes with probabilities for each image file, resized to the model's input."""
    model, classes = load_trained(folder, run, device)
    channels, size = DATASETS[run.dataset].channels, DATASETS[run.dataset].size
    batch = torch.stack([load_image(path, channels, size) for path in images]).to(device)
    if uses_channels_last(model):
        batch = batch.contiguous(memory_format=torch.channels_last)
    with autocast(device, run.identity.amp):
        probabilities = tta_output(model, batch, run.recipe.tta).float().exp()
    best = probabilities.topk(min(top, len(classes)), dim=1)
    return [[(classes[index], value) for value, index in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(best.values, best.indices)]
