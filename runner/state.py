"""The training state: model, optimizer, learning-rate schedule, weight average, the named random generators,
epoch, step and metrics, in one object whose state_dict is the checkpoint.

Checkpoints carry a format number. Format 1 (the first release) had fixed keys; it still loads, with defaults for
what it lacks. Format 3 keeps a list of optimizers (Muon and SGD for optimizer=muon) where 1 and 2 kept one.
Random streams: `shuffle` orders the batches and is shared by every process; `augment`, `batch_transform` and
torch's own generator (dropout) belong to each process and are saved per process, as is the training device's generator.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from runner.devices import derive_seed, device_rng_state, restore_device_rng
from runner.distributed import SOLO, Group
from models import whitening_layer
from runner.optimizers import make_optimizers
from runner.settings import REGISTERED, Recipe

FORMAT = 3
LOOKAHEAD_EVERY = 5
PER_PROCESS = ("augment", "workers", "batch_transform")  # generators each process draws from on its own


def lr_factor(recipe: Recipe, step: int, total: int) -> float:
    """The schedule's factor for optimizer step `step` (from 0) of `total`: linear from warmup_start to 1 over
    warmup_fraction of the steps, then linear to final_lr_factor at the last step."""
    warm = int(recipe.warmup_fraction * total)
    if step < warm:
        return recipe.warmup_start + (1 - recipe.warmup_start) * step / warm
    return 1 + (recipe.final_lr_factor - 1) * (step - warm) / max(total - warm, 1)


def lookahead_decay(step: int, total: int) -> float:
    return 0.95 ** LOOKAHEAD_EVERY * (step / total) ** 3


class TrainingState:
    """Everything a run changes as it trains. `model` is the bare model (its weights are what is saved);
    `step_model` is what the loop calls (compiled or wrapped for several processes)."""

    def __init__(self, version: int, recipe: Recipe, model: nn.Module, device: torch.device, seed: int,
                 steps_per_epoch: int, group: Group = SOLO):
        self.version, self.recipe, self.model, self.device = version, recipe, model, device
        self.step_model = model
        self.optimizers = make_optimizers(recipe, model)
        self.group, self.seed = group, seed
        rank = group.rank
        self.generators = {"shuffle": torch.Generator().manual_seed(seed),
                           "augment": torch.Generator().manual_seed(derive_seed(seed, "augment", rank)),
                           "flip": torch.Generator().manual_seed(derive_seed(seed, "flip")),
                           "workers": torch.Generator().manual_seed(derive_seed(seed, "workers", rank)),
                           "batch_transform": torch.Generator().manual_seed(derive_seed(seed, "batch transform", rank))}
        self.steps_per_epoch = steps_per_epoch
        self.epoch = self.step = 0
        self.metrics, self.classes = [], []
        self.first_loss = None
        self.average = None

    @property
    def total_steps(self) -> int:
        return self.recipe.epochs * self.steps_per_epoch

    def begin_step(self) -> None:
        """Set every group's learning rate for the coming step."""
        factor = lr_factor(self.recipe, self.step, self.total_steps) if self.recipe.scheduled else 1.0
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * factor

    @property
    def param_groups(self) -> list:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def lr(self) -> float:
        """The main group's current learning rate (the last of the first optimizer's)."""
        return self.optimizers[0].param_groups[-1]["lr"]

    def resize_batch(self, images: torch.Tensor) -> torch.Tensor:
        """A training batch at the size the recipe gives this epoch (the one under way is self.epoch + 1)."""
        size = self.recipe.image_size(self.epoch + 1, images.shape[-1])
        if size == images.shape[-1]:
            return images
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    def transform_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recipe's batch transform of a training batch: images, and targets (labels or probabilities)."""
        if self.recipe.batch_transform == "none":
            return images, labels
        transform = REGISTERED["batch_transform"][self.recipe.batch_transform]
        return transform(images, labels, classes=len(self.classes), generator=self.generators["batch_transform"],
                         **self.recipe.batch_transform_args)

    def frozen_parameters(self) -> list:
        """Parameters that take no update this epoch: the whitening bias after its epochs."""
        whitening = whitening_layer(self.model)
        if whitening is not None and self.epoch >= self.recipe.whitening_bias_epochs:
            return [whitening.conv.bias]
        return []

    def end_step(self) -> None:
        """Count the step; lookahead averages the weights every few steps from its first epoch, and at the very
        last step the average becomes the weights."""
        self.step += 1
        if not self.recipe.lookahead_from or self.epoch + 1 < self.recipe.lookahead_from:
            return
        if self.average is None:
            self.average = {name: value.detach().clone() for name, value in self.model.state_dict().items()
                            if value.is_floating_point()}
        if self.step % LOOKAHEAD_EVERY == 0:
            self._lookahead(lookahead_decay(self.step, self.total_steps))
        if self.step == self.total_steps:
            self._lookahead(1.0)

    @torch.no_grad()
    def _lookahead(self, decay: float) -> None:
        weights = self.model.state_dict()
        for name, average in self.average.items():
            average.lerp_(weights[name], 1 - decay)
            weights[name].copy_(average)

    def process_rng(self) -> dict:
        return {"torch": torch.get_rng_state(), "device": device_rng_state(self.device),
                **{name: self.generators[name].get_state() for name in PER_PROCESS}}

    def restore_process_rng(self, saved: dict) -> None:
        torch.set_rng_state(saved["torch"])
        restore_device_rng(self.device, saved.get("device"))
        for name in PER_PROCESS:
            if name in saved:
                self.generators[name].set_state(saved[name])

    def state_dict(self, processes: list | None = None) -> dict:
        """The checkpoint; `processes` holds every process's random state (default: this one's)."""
        return {"format": FORMAT, "version": self.version, "epoch": self.epoch, "step": self.step,
                "model": self.model.state_dict(),
                "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
                "average": self.average, "shuffle_rng": self.generators["shuffle"].get_state(),
                "processes": processes or [self.process_rng()], "metrics": self.metrics, "classes": self.classes,
                "first_loss": self.first_loss}

    def load_state_dict(self, state: dict) -> None:
        """Load a checkpoint of format 1, 2 or 3; raises KeyError, ValueError or RuntimeError when it does not fit."""
        self.model.load_state_dict(state["model"])
        saved = state["optimizers"] if "optimizers" in state else [state["optimizer"]]
        if len(saved) != len(self.optimizers):
            raise ValueError(f"{len(saved)} optimizer(s) saved, {len(self.optimizers)} in the recipe")
        peaks = [group["peak_lr"] for group in self.param_groups]  # the recipe's (format 1 saved none)
        for optimizer, optimizer_state in zip(self.optimizers, saved):
            optimizer.load_state_dict(optimizer_state)
        for group, peak in zip(self.param_groups, peaks):
            group["peak_lr"] = peak
        self.epoch = int(state["epoch"])
        self.step = int(state.get("step", self.epoch * self.steps_per_epoch))
        self.metrics, self.classes = list(state["metrics"]), list(state["classes"])
        self.first_loss = state.get("first_loss")
        self.average = state.get("average")
        if self.average is not None:
            self.average = {name: value.to(self.device) for name, value in self.average.items()}
        self.generators["shuffle"].set_state(state["shuffle_rng"])
        processes = state.get("processes") or [{"torch": state["torch_rng"]}]
        if len(processes) == self.group.size:
            self.restore_process_rng(processes[self.group.rank])
        else:
            self.reseed_process(f"continued by {self.group.size} processes after epoch {self.epoch}")

    def reseed_process(self, occasion: str) -> None:
        """Fresh per-process streams when a run continues on another number of processes; the shared batch order
        goes on unchanged."""
        torch.manual_seed(derive_seed(self.seed, occasion, self.group.rank))
        for name in PER_PROCESS:
            self.generators[name].manual_seed(derive_seed(self.seed, name, occasion, self.group.rank))

    def diverged(self, loss: float, accuracy: float, classes: int) -> str | None:
        """Why the run diverged, or None. Accuracy at chance (at most 1.5 / classes) with a loss over 10 ln(classes)
        (a uniform guess scores ln(classes)) is a divergence whenever it starts, even in the first window; so is a
        loss that is not finite, or one that exploded to over 100 times the first measured at chance accuracy."""
        if not math.isfinite(loss):
            return f"the loss became {loss}"
        at_chance = accuracy <= 1.5 / classes
        if at_chance and loss > 10 * math.log(classes):
            return f"the loss reached {loss:.4g} (over 10 times a uniform guess's, {math.log(classes):.4g}) " \
                   f"with accuracy at chance ({accuracy:.2f})"
        if self.first_loss is None:
            self.first_loss = loss
        elif at_chance and loss > 100 * self.first_loss:
            return f"the loss exploded to {loss:.4g} (over 100 times its first value, {self.first_loss:.4g}) " \
                   f"and accuracy fell to chance ({accuracy:.2f})"
        return None
