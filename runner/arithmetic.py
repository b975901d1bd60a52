"""The arithmetic of a whole run, counted without data or time: torch's FLOP counter (convolutions and matrix
products, forward and backward, and an optimizer's own, such as Muon's orthogonalisation) over a training step and
the test passes at the row's shapes on the `meta` device, where tensors have shapes and no values. `list` shows
each row's figure as its ladder stores it (so that `list` needs no torch); the tests count them again here."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import build_model
from runner.settings import DATASETS, Version
from runner.state import TrainingState
from train import on_device, summed_loss, train_step, tta_output

META = torch.device("meta")


def counted(work) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def run_tflop(row: Version) -> float:
    """TFLOP of a whole run of the row as `python main.py V` trains it: every epoch's training steps over the
    training split at the epoch's image size (the last, shorter batch too unless the recipe drops it) and a test
    pass, then the final test pass with the recipe's test-time augmentation where it has one."""
    recipe, dataset = row.recipe, DATASETS[row.dataset]
    model = on_device(build_model(recipe, dataset.channels, dataset.classes), META)
    state = TrainingState(row.number, recipe, model, META, 0, 1)
    state.amp, state.classes = False, list(range(dataset.classes))

    def images(count: int) -> torch.Tensor:
        return torch.empty(count, dataset.channels, dataset.size, dataset.size, device=META)

    def step(count: int) -> int:
        labels = torch.zeros(count, dtype=torch.long, device=META)
        return counted(lambda: train_step(state, images(count), labels, count))

    def epoch(number: int) -> int:
        """An epoch's training steps; the step resizes the images as the recipe has it in that epoch."""
        state.epoch = number - 1
        full, rest = divmod(sum(dataset.class_sizes), recipe.batch_size)
        return full * step(recipe.batch_size) + (step(rest) if rest and not recipe.drop_last else 0)

    def test(tta: str) -> int:
        model.eval()
        with torch.no_grad():
            return counted(lambda: summed_loss(tta_output(model, images(dataset.test_images), tta),
                                               torch.zeros(dataset.test_images, dtype=torch.long, device=META)))

    model.train()
    trained, by_size = 0, {}  # an epoch's arithmetic by its images' size, counted once
    for number in range(1, recipe.epochs + 1):
        size = recipe.image_size(number, dataset.size)
        if size not in by_size:
            by_size[size] = epoch(number)
        trained += by_size[size]
    plain, final = test("none"), test(recipe.tta) if recipe.tta != "none" else 0
    return (trained + recipe.epochs * plain + final) / 1e12
