"""The train/test loop: a step, an epoch, a test pass (optionally with test-time augmentation), and fit, which
trains a run from its next epoch to its last and hands every record to the run folder.

The step never waits for the host: loss and correct counts are summed on the device and read every
REFRESH_EVERY steps, which feeds the progress bar and catches a diverging loss. Shuffling, augmentation and
dropout draw from generators the checkpoint keeps, and testing draws from none, so a resumed run continues
exactly and testing more or less often never changes the trained weights.
"""
import contextlib
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runner.console import progress
from runner.distributed import SOLO, Group, is_writer, prepare_once_per_machine, say
from runner.devices import (NO_COMPILER, can_compile, derive_seed, give_back_freed_memory, prepare_torch,
                             resolve_device, seed_process, to_device)
from runner.events import RunLog, hyperparameters
from runner.errors import CheckpointError, Diverged, RunnerError
from runner.loaders import load_splits, make_loaders
from models import build_model, count_parameters, fit_input_layers
from runner.records import CURVES, RunFolder
from runner.settings import DATASETS, RunConfig
from runner.sources import DataSource, class_count
from runner.state import TrainingState

REFRESH_EVERY = 50
TTA_NAMES = {"mirror": "mirror", "mirror+shift": "mirror and 1-pixel shifts"}
SPLIT_TITLES = {"test": "Test", "val": "Val"}  # how an epoch's line names what it was tested on


def uses_channels_last(model: nn.Module) -> bool:
    """Convolutions run faster on NHWC memory (measured in README.md); the MLP has nothing to gain."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on the device, in NHWC memory where it has convolutions."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if uses_channels_last(model) else model


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast when enabled; otherwise nothing at all, so any device type works (`meta` included)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def summed_loss(output: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The batch's summed loss; outputs are log-probabilities, so against labels this is the negative
    log-likelihood, and with label smoothing or targets that are class probabilities (a batch transform's) the
    cross-entropy (whose log_softmax leaves log-probabilities as they are)."""
    if label_smoothing or targets.is_floating_point():
        return F.cross_entropy(output.float(), targets, label_smoothing=label_smoothing, reduction="sum")
    return F.nll_loss(output.float(), targets, reduction="sum")


def train_step(state: TrainingState, images: torch.Tensor, labels: torch.Tensor,
               divisor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on the loss summed and divided by `divisor` (the batch's size, or this process's share
    of the global batch); returns the summed loss and the correct count, still on the device. The recipe's early size
    and batch transform make the images and targets the loss sees; the count is against the labels before it."""
    images, targets = state.transform_batch(state.resize_batch(images), labels)
    with autocast(images.device, state.amp):
        output = state.step_model(images)
    loss = summed_loss(output, targets, state.recipe.label_smoothing)
    for optimizer in state.optimizers:
        optimizer.zero_grad(set_to_none=True)
    (loss / divisor).backward()
    for parameter in state.frozen_parameters():
        parameter.grad = None
    for optimizer in state.optimizers:
        optimizer.step()
    return loss.detach(), (output.argmax(dim=1) == labels).sum()


def to_model_input(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = to_device(images, device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, to_device(labels, device)


def train_epoch(state: TrainingState, loader, epoch: int, quiet: bool, log=None) -> tuple[float, float, int]:
    """Returns the epoch's mean loss, accuracy and number of images (over every process)."""
    state.step_model.train()
    device, channels_last = state.device, uses_channels_last(state.model)
    # Loss and correct count since the last reading, summed on the device in float32 (MPS has no float64); each
    # reading adds them to the epoch's sums on the host, in float64.
    window = torch.zeros(2, device=device)
    epoch_sums = torch.zeros(3, dtype=torch.float64)  # loss, correct, images
    seen = 0
    bar = progress(loader.batches(epoch), f"Epoch {epoch}", quiet, total=len(loader))
    for step, (images, labels, divisor) in enumerate(bar, 1):
        images, labels = to_model_input(images, labels, device, channels_last)
        state.begin_step()
        loss, correct = train_step(state, images, labels, divisor)
        state.end_step()
        window += torch.stack([loss, correct.float()])
        seen += len(labels)
        if step % REFRESH_EVERY == 0 or step == len(loader):
            read = check_progress(state, window, seen, epoch, step)
            epoch_sums += read
            window.zero_()
            seen = 0
            bar.show(loss=f"{epoch_sums[0] / epoch_sums[2]:.4f}")
            if log and read[2]:
                log.running_loss(state.step, float(read[0] / read[2]))
        state.group.check_stop()
    state.group.settle()
    return (epoch_sums[0] / epoch_sums[2]).item(), (epoch_sums[1] / epoch_sums[2]).item(), int(epoch_sums[2])


def check_progress(state: TrainingState, window: torch.Tensor, seen: int, epoch: int, step: int) -> torch.Tensor:
    """Read the window's sums (loss, correct, images: over every process, in float64 on the host) and stop a
    diverging run."""
    read = state.group.all_sum(torch.cat([window, window.new_tensor([seen])])).cpu().double()
    if read[2] > 0:
        why = state.diverged(float(read[0] / read[2]), float(read[1] / read[2]), len(state.classes) or 10)
        if why:
            kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no epoch had finished"
            raise Diverged(f"{why} in epoch {epoch} by step {step}; the run stopped and {kept}. Try a lower "
                           f"learning rate, e.g. {state.recipe.lr / 10:g} (--lr, or --set lr=)",
                           shared=state.group.data_parallel)
    return read


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
    loss_sum = torch.zeros((), device=device)  # float32, which every device has
    confusion = torch.zeros(classes * classes, device=device, dtype=torch.int64)
    outputs = []
    for images, labels, _ in progress(loader.batches(), "Testing", quiet, total=len(loader)):
        images, labels = to_model_input(images, labels, device, channels_last)
        with autocast(device, amp):
            output = tta_output(model, images, tta).float()
        loss_sum += summed_loss(output, labels)
        cells = labels * classes + output.argmax(dim=1)  # a fixed-size count: bincount's size would wait on the host
        confusion.index_add_(0, cells, torch.ones_like(cells))
        if keep_outputs:
            outputs.append(output.cpu())
        group.check_stop()
    group.settle()
    loss_sum, confusion = group.all_sum(loss_sum), group.all_sum(confusion)
    confusion = confusion.view(classes, classes).cpu()
    total = confusion.sum().item()
    return TestResult(loss_sum.item() / total, confusion.trace().item() / total, confusion,
                      torch.cat(outputs) if keep_outputs else None)


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
        folder.catch_up_metrics(checkpoint)
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
    prepare_torch(device, runtime.threads, run.identity.deterministic)
    seed_process(run.identity.seed, group.rank)
    model = build_model(recipe, DATASETS[run.dataset].channels, class_count(run))
    source = DataSource.of(run)
    if group.data_parallel:
        splits, classes = prepare_once_per_machine("preparing the data", lambda: load_splits(run, source, resume))
    else:
        splits, classes = load_splits(run, source, resume)
    if not resume and True in splits:
        # Fitted on the CPU, where the images are and float64 exists (MPS has none), before the model moves.
        fit_input_layers(model, splits[True].images,
                         torch.Generator().manual_seed(derive_seed(run.identity.seed, "input layers")))
    model = on_device(model, device)
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
        state.classes = classes
    folder.write_config(run, params=count_parameters(model), classes=classes)
    state.step_model = group.wrap(model, device, run.identity.sync_bn)
    if run.identity.compile and not can_compile(device):  # a compiled run resumed where no C++ compiler is
        if is_writer():
            print(NO_COMPILER, file=sys.stderr)
    elif run.identity.compile:
        # compiled code kept with the decoded datasets, so that later runs of the same model skip most of the build
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(runtime.cache_dir, "inductor"))
        state.step_model = torch.compile(state.step_model)
    say(f"Model Parameter Count: {count_parameters(model)}")
    say("Training...")
    log = RunLog(folder, state.step, run.identity.evaluated)
    test_split = splits.get(False) if not group.data_parallel else None
    try:
        for epoch in range(state.epoch + 1, recipe.epochs + 1):
            run_epoch(state, run, folder, train_loader, test_loader, epoch, log, test_split)
    finally:
        log.close()
        if state.metrics:
            draw_curves(folder, run, state.metrics)
    last, split = state.metrics[-1], run.identity.evaluated
    title = SPLIT_TITLES[split]
    held = f" ({run.identity.holdout:,} held-out training images)" if run.identity.holdout else ""
    say("Training complete!")
    if f"final_{split}_acc" in last:
        say(f"{title} Loss: {last[f'final_{split}_loss']:.4f} | {title} Acc: {last[f'final_{split}_acc']:.4f} "
            f"(test-time augmentation: {TTA_NAMES[recipe.tta]}){held}")
    else:
        say(f"{title} Loss: {last[f'{split}_loss']:.4f} | {title} Acc: {last[f'{split}_acc']:.4f}{held}")
    return state.metrics


def run_epoch(state: TrainingState, run: RunConfig, folder: RunFolder, train_loader, test_loader, epoch: int,
              log: RunLog, test_split) -> None:
    """Train one epoch, test it when due (the last with test-time augmentation too, when the recipe has it), then
    record it: TensorBoard, checkpoint, metrics.csv, and the epoch's line. Under --holdout the tests are on the
    held-out images and their numbers are val_* (test_* stay empty)."""
    recipe, runtime, quiet = run.recipe, run.runtime, run.runtime.quiet or not is_writer()
    last, logged, split = epoch == recipe.epochs, dict(log.seconds), run.identity.evaluated
    started = time.perf_counter()
    train_loss, train_acc, images = train_epoch(state, train_loader, epoch, quiet, log)
    row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": None, "test_acc": None,
           "lr": state.lr, f"{split}_loss": None, f"{split}_acc": None}
    line = f"Epoch {epoch} / {recipe.epochs} | Train Loss: {train_loss:.4f} | Train Acc: {train_acc:.4f}"
    test = None
    if epoch % runtime.eval_every == 0 or last:
        tested = time.perf_counter()
        test = evaluate(state.step_model, test_loader, state.device, state.amp, quiet, len(state.classes),
                        group=state.group,
                        keep_outputs=last and recipe.tta == "none" and test_split is not None and folder.writer)
        row.update({f"{split}_loss": test.loss, f"{split}_acc": test.accuracy,
                    "test_seconds": round(time.perf_counter() - tested, 3)})
        line += f" | {SPLIT_TITLES[split]} Loss: {test.loss:.4f} | {SPLIT_TITLES[split]} Acc: {test.accuracy:.4f}"
    row["seconds"] = round(time.perf_counter() - started, 3)
    if last and recipe.tta != "none":
        started = time.perf_counter()
        test = evaluate(state.step_model, test_loader, state.device, state.amp, quiet, len(state.classes),
                        tta=recipe.tta, group=state.group, keep_outputs=test_split is not None and folder.writer)
        row.update({f"final_{split}_loss": test.loss, f"final_{split}_acc": test.accuracy, "tta": recipe.tta,
                    f"final_{split}_seconds": round(time.perf_counter() - started, 3)})
    state.epoch = epoch
    log.epoch(state.step, row, images)
    if last and folder.writer:
        finish_log(log, run, state, row, test, test_split)
    row["log_seconds"] = {kind: round(log.seconds[kind] - logged[kind], 4) for kind in logged}
    state.metrics.append(row)
    folder.save_checkpoint(state.state_dict(state.group.gather(state.process_rng())))
    folder.write_metrics(state.metrics)
    say(line)
    if test is not None:  # the test's batches left blocks the training steps do not reuse
        give_back_freed_memory()


def finish_log(log: RunLog, run: RunConfig, state: TrainingState, row: dict, test: TestResult,
               test_split) -> None:
    """TensorBoard's view of a finished run: hyperparameters with the final accuracies, the confusion matrix and,
    when the test split is at hand, the most confident mistakes."""
    from runner import plots

    title = f"Version {run.version}"
    mistakes = None
    if test.outputs is not None:
        mistakes = plots.mistakes_figure(test_split.images, test_split.labels,
                                         plots.select_mistakes(test.outputs, test_split.labels), state.classes,
                                         f"{title}: the most confident mistakes")
    final = {f"hparam/{run.identity.evaluated}_accuracy": test.accuracy, "hparam/train_accuracy": row["train_acc"]}
    log.finish(state.step, hyperparameters(run), final, plots.confusion_figure(test.confusion, state.classes, title),
               mistakes)


def draw_curves(folder: RunFolder, run: RunConfig, metrics: list) -> None:
    from runner import plots
    from configs import VERSIONS

    reference = VERSIONS[run.version].reference
    split = run.identity.evaluated  # a reference is a test accuracy: no line for one on held-out images
    folder.write_picture(CURVES, lambda f: plots.save(plots.curves_figure(
        metrics, reference[1] if reference and split == "test" else None, f"Version {run.version}", split), f))
