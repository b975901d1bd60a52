"""The train/test loop: a step, an epoch, a test pass (optionally with test-time augmentation), and fit, which
trains a run from its next epoch to its last and hands every record to the run folder.

The step never waits for the host: loss and correct counts are summed on the device and read every
REFRESH_EVERY steps, which feeds the progress bar and catches a diverging loss. Shuffling, augmentation and
dropout draw from generators the checkpoint keeps, and testing draws from none, so a resumed run continues
exactly and testing more or less often never changes the trained weights.
"""
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from console import progress
from distributed import SOLO, Group, is_writer, prepare_once_per_machine, say
from data import DataSource, check_classes, load_split
from devices import prepare_torch, resolve_device, seed_process, to_device
from errors import CheckpointError, RunnerError
from loaders import Augmentation, BatchPlan, ClassicLoader, ResidentLoader, classic_dataset, classic_transform
from models import build_model, count_parameters, fit_input_layers
from records import CURVES, RunFolder
from settings import DATASETS, RunConfig
from state import TrainingState

REFRESH_EVERY = 50
TTA_NAMES = {"mirror": "mirror", "mirror+shift": "mirror and 1-pixel shifts"}


def uses_channels_last(model: nn.Module) -> bool:
    """Convolutions run faster on NHWC memory (measured in README.md); the MLP has nothing to gain."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def summed_loss(output: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The batch's summed loss; outputs are log-probabilities, so this is the negative log-likelihood (with label
    smoothing, the cross-entropy against smoothed targets)."""
    if label_smoothing:
        return F.cross_entropy(output.float(), labels, label_smoothing=label_smoothing, reduction="sum")
    return F.nll_loss(output.float(), labels, reduction="sum")


def train_step(state: TrainingState, images: torch.Tensor, labels: torch.Tensor,
               divisor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on the loss summed and divided by `divisor` (the batch's size, or this process's share
    of the global batch); returns the summed loss and the correct count, still on the device."""
    with autocast(images.device, state.amp):
        output = state.step_model(images)
    loss = summed_loss(output, labels, state.recipe.label_smoothing)
    state.optimizer.zero_grad(set_to_none=True)
    (loss / divisor).backward()
    for parameter in state.frozen_parameters():
        parameter.grad = None
    state.optimizer.step()
    return loss.detach(), (output.argmax(dim=1) == labels).sum()


def to_model_input(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = to_device(images, device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, to_device(labels, device)


def train_epoch(state: TrainingState, loader, epoch: int, quiet: bool) -> tuple[float, float]:
    state.step_model.train()
    device, channels_last = state.device, uses_channels_last(state.model)
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss, correct, seen
    checked = torch.zeros(3, dtype=torch.float64)
    bar = progress(loader.batches(epoch), f"Epoch {epoch}", quiet, total=len(loader))
    for step, (images, labels, divisor) in enumerate(bar, 1):
        images, labels = to_model_input(images, labels, device, channels_last)
        state.begin_step()
        loss, correct = train_step(state, images, labels, divisor)
        state.end_step()
        totals += torch.stack([loss.double(), correct.double(), torch.tensor(len(labels), device=device,
                                                                              dtype=torch.float64)])
        if step % REFRESH_EVERY == 0 or step == len(loader):
            checked = check_progress(state, totals, checked, epoch, step)
            bar.show(loss=f"{checked[0] / checked[2]:.4f}")
        state.group.check_stop()
    state.group.settle()
    return (checked[0] / checked[2]).item(), (checked[1] / checked[2]).item()


def check_progress(state: TrainingState, totals: torch.Tensor, checked: torch.Tensor, epoch: int,
                   step: int) -> torch.Tensor:
    """Read the epoch's sums (over every process) and stop a diverging run; returns the sums read."""
    now = state.group.all_sum(totals.clone()).cpu()
    window = now - checked
    if window[2] > 0:
        why = state.diverged(float(window[0] / window[2]), float(window[1] / window[2]), 10)
        if why:
            kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no epoch had finished"
            raise RunnerError(f"{why} in epoch {epoch} by step {step}; the run stopped and {kept}. Try a lower "
                              f"learning rate, e.g. --lr {state.recipe.lr / 10:g}", shared=state.group.data_parallel)
    return now


def tta_output(model: nn.Module, images: torch.Tensor, tta: str) -> torch.Tensor:
    """Log-probabilities; with test-time augmentation, those of the logits averaged (as airbench does) over the
    image and its mirror, and for mirror+shift also over both shifted one pixel diagonally each way."""
    if tta == "none":
        return model(images)

    def mirrored(batch):
        return (model(batch) + model(batch.flip(-1))) / 2

    output = mirrored(images)
    if tta == "mirror+shift":
        height, width = images.shape[-2:]
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        shifted = (mirrored(padded[..., :height, :width]) + mirrored(padded[..., 2:, 2:])) / 2
        output = (output + shifted) / 2
    return output.log_softmax(dim=1)


@dataclass
class TestResult:
    loss: float
    accuracy: float
    confusion: torch.Tensor  # rows: true class, columns: predicted
    outputs: torch.Tensor | None = None  # log-probabilities of every test image, when asked for


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool, quiet: bool, classes: int = 10,
             tta: str = "none", keep_outputs: bool = False, group: Group = SOLO) -> TestResult:
    model.eval()
    channels_last = uses_channels_last(model)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(classes * classes, device=device, dtype=torch.int64)
    outputs = []
    for images, labels, _ in progress(loader.batches(), "Testing", quiet, total=len(loader)):
        images, labels = to_model_input(images, labels, device, channels_last)
        with autocast(device, amp):
            output = tta_output(model, images, tta).float()
        loss_sum += summed_loss(output, labels).double()
        confusion += torch.bincount(labels * classes + output.argmax(dim=1), minlength=classes * classes)
        if keep_outputs:
            outputs.append(output.cpu())
        group.check_stop()
    group.settle()
    loss_sum, confusion = group.all_sum(loss_sum), group.all_sum(confusion)
    confusion = confusion.view(classes, classes).cpu()
    total = confusion.sum().item()
    return TestResult(loss_sum.item() / total, confusion.trace().item() / total, confusion,
                      torch.cat(outputs) if keep_outputs else None)


def make_loaders(run: RunConfig, source: DataSource, splits: dict, state: TrainingState, device: torch.device):
    """Train and test loaders on one batch plan per split; the test split in order, drawing nothing random."""
    recipe, rank, world = run.recipe, state.group.rank, state.group.size
    augmenting = recipe.crop_padding > 0 or recipe.flip != "none"
    if run.identity.loader == "resident":
        augmentation = Augmentation(recipe.crop_padding, recipe.flip, state.generators["augment"],
                                    state.generators["flip"]) if augmenting else None
        train, test = splits[True], splits[False]
        return (ResidentLoader(train, BatchPlan(len(train.labels), recipe.batch_size, recipe.drop_last, rank, world),
                               device, state.generators["shuffle"], augmentation),
                ResidentLoader(test, BatchPlan(len(test.labels), recipe.batch_size, False, rank, world), device))
    size = DATASETS[run.dataset].size
    train = classic_dataset(source, True, classic_transform(size, recipe.crop_padding, recipe.flip, source.resize))
    test = classic_dataset(source, False, classic_transform(size, 0, "none", source.resize))
    return (ClassicLoader(train, BatchPlan(len(train), recipe.batch_size, recipe.drop_last, rank, world), device,
                          state.generators["shuffle"], state.generators["workers"]),
            ClassicLoader(test, BatchPlan(len(test), recipe.batch_size, False, rank, world), device, None,
                          state.generators["workers"]))


def load_splits(run: RunConfig, source: DataSource, resume: bool) -> tuple[dict, list]:
    """The splits the run needs in memory, and the class names: both for the resident loader; for the classic one
    only the train split, and only when input layers are fitted to it."""
    wanted = (True, False) if run.identity.loader == "resident" else ()
    if not resume and (run.recipe.normalize or run.recipe.whitening) and True not in wanted:
        wanted = (True,)
    splits = {train: load_split(source, train) for train in wanted}
    if len(splits) == 2:
        classes = splits[True].classes
        check_classes(classes, splits[False].classes, source.name)
    else:
        datasets = [classic_dataset(source, train) for train in (True, False)]
        classes = list(datasets[0].classes)
        check_classes(classes, list(datasets[1].classes), source.name)
    return splits, classes


def resume_state(state: TrainingState, folder: RunFolder, run: RunConfig) -> None:
    """Load the run folder's checkpoint into the state; every process of a run meets the same failures here."""
    try:
        checkpoint = folder.load_checkpoint()
        if checkpoint["version"] != run.version:
            raise CheckpointError(f"{folder.path / 'checkpoint.pt'} belongs to version {checkpoint['version']}, but "
                                  f"its config.json says version {run.version}: the folder is mixed up; train again "
                                  "in a new folder")
        try:
            state.load_state_dict(checkpoint)
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{folder.path / 'checkpoint.pt'} does not fit version {run.version}'s model "
                                  f"({type(error).__name__}): train again in a new folder") from None
        if state.epoch >= run.recipe.epochs:
            if run.fixed_length:
                raise RunnerError(f"{folder.path} already finished its {state.epoch} epochs, over which its learning "
                                  "rate was scheduled, so it cannot be extended: start a new run with --epochs N")
            raise RunnerError(f"{folder.path} already finished {state.epoch} epochs: pass --epochs N with N > "
                              f"{state.epoch} to extend it")
    except RunnerError as error:
        error.shared = state.group.data_parallel
        raise


def fit(run: RunConfig, folder: RunFolder, resume: bool = False, group: Group = SOLO) -> list:
    """Train the run's epochs (after its checkpoint's, when resuming), recording after each one; returns the
    metrics of every epoch. `group`: the processes training this run together."""
    recipe, runtime = run.recipe, run.runtime
    device = resolve_device(runtime.device)
    prepare_torch(runtime.threads, run.identity.deterministic)
    seed_process(run.identity.seed, group.rank)
    model = build_model(recipe, DATASETS[run.dataset].channels).to(device)
    if uses_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    source = DataSource.of(run)
    if group.data_parallel:
        splits, classes = prepare_once_per_machine("preparing the data", lambda: load_splits(run, source, resume))
    else:
        splits, classes = load_splits(run, source, resume)
    state = TrainingState(run.version, recipe, model, device, run.identity.seed, 0, group)
    state.amp = run.identity.amp
    train_loader, test_loader = make_loaders(run, source, splits, state, device)
    state.steps_per_epoch = len(train_loader)
    if resume:
        resume_state(state, folder, run)
        if state.classes != classes:
            raise RunnerError(f"{source.name} has the classes {classes}, but the run was trained on "
                              f"{state.classes}: give the data it was trained on", shared=group.data_parallel)
    else:
        if True in splits:
            fit_input_layers(model, splits[True].images)
        state.classes = classes
    folder.write_config(run, params=count_parameters(model), classes=classes)
    wrapped = group.wrap(model, device, run.identity.sync_bn)
    state.step_model = torch.compile(wrapped) if runtime.compile else wrapped
    say(f"Model Parameter Count: {count_parameters(model)}")
    say("Training...")
    try:
        for epoch in range(state.epoch + 1, recipe.epochs + 1):
            run_epoch(state, run, folder, train_loader, test_loader, epoch)
    finally:
        if state.metrics:
            draw_curves(folder, run, state.metrics)
    last = state.metrics[-1]
    say("Training complete!")
    if "final_test_acc" in last:
        say(f"Test Loss: {last['final_test_loss']:.4f} | Test Acc: {last['final_test_acc']:.4f} "
            f"(test-time augmentation: {TTA_NAMES[recipe.tta]})")
    else:
        say(f"Test Loss: {last['test_loss']:.4f} | Test Acc: {last['test_acc']:.4f}")
    return state.metrics


def run_epoch(state: TrainingState, run: RunConfig, folder: RunFolder, train_loader, test_loader, epoch: int) -> None:
    """Train one epoch, test it when due (the last with test-time augmentation too, when the recipe has it), then
    record it: checkpoint, metrics.csv, and the epoch's line."""
    recipe, runtime, quiet = run.recipe, run.runtime, run.runtime.quiet or not is_writer()
    started = time.perf_counter()
    train_loss, train_acc = train_epoch(state, train_loader, epoch, quiet)
    row = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=None, test_acc=None, lr=state.lr)
    line = f"Epoch {epoch} / {recipe.epochs} | Train Loss: {train_loss:.4f} | Train Acc: {train_acc:.4f}"
    if epoch % runtime.eval_every == 0 or epoch == recipe.epochs:
        test = evaluate(state.step_model, test_loader, state.device, state.amp, quiet, group=state.group)
        row.update(test_loss=test.loss, test_acc=test.accuracy)
        line += f" | Test Loss: {test.loss:.4f} | Test Acc: {test.accuracy:.4f}"
    row["seconds"] = round(time.perf_counter() - started, 3)
    if epoch == recipe.epochs and recipe.tta != "none":
        started = time.perf_counter()
        final = evaluate(state.step_model, test_loader, state.device, state.amp, quiet, tta=recipe.tta,
                         group=state.group)
        row.update(final_test_loss=final.loss, final_test_acc=final.accuracy, tta=recipe.tta,
                   final_test_seconds=round(time.perf_counter() - started, 3))
    state.epoch = epoch
    state.metrics.append(row)
    folder.save_checkpoint(state.state_dict(state.group.gather(state.process_rng())))
    folder.write_metrics(state.metrics)
    say(line)


def draw_curves(folder: RunFolder, run: RunConfig, metrics: list) -> None:
    import plots
    from configs import VERSIONS

    reference = VERSIONS[run.version].reference
    folder.write_picture(CURVES, lambda f: plots.plot_curves(metrics, reference[1] if reference else None, f,
                                                             f"Version {run.version}"))
