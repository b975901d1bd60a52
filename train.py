"""The train/test loop and what it records: config.json, metrics.csv, curves.png and checkpoint.pt per run.

Loss and correct counts are summed on the device and read back every REFRESH_EVERY steps, which feeds the progress
bar and catches a diverging loss without a host sync per step. Shuffling has its own generator and dropout the global
one, both saved in the checkpoint, and evaluation draws from neither, so a resumed run continues exactly where it
stopped and testing more or less often never changes the trained weights.
"""
import csv
import json
import math
import os
import pickle
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import plots
from configs import DATASETS, VERSIONS
from data import (DataSource, ResidentLoader, check_classes, load_image, load_split, make_loaders,
                  progress)
from errors import CheckpointError, RunnerError
from models import build_model, count_parameters

CONFIG, METRICS, CURVES, CHECKPOINT = "config.json", "metrics.csv", "curves.png", "checkpoint.pt"
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]
REFRESH_EVERY = 50
CHECKPOINT_KEYS = {"version", "epoch", "model", "optimizer", "shuffle_rng", "torch_rng", "cuda_rng", "metrics",
                   "classes"}


@dataclass
class RunConfig:
    """Everything that decides a run: the version's recipe with the user's overrides applied."""

    version: int
    dataset: str
    model: str
    model_args: dict
    params: int
    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    seed: int = 0
    device: str = "cpu"
    loader: str = "resident"
    eval_every: int = 1
    amp: bool = False
    compile: bool = False
    deterministic: bool = False
    threads: int | None = None
    data_dir: str = "data"
    image_folder: str | None = None
    cache_dir: str | None = None
    overrides: dict = field(default_factory=dict)

    @classmethod
    def for_version(cls, number: int, **overrides) -> "RunConfig":
        row = VERSIONS[number]
        given = {name: value for name, value in overrides.items() if value is not None}
        changed = {name: value for name, value in given.items() if name in OVERRIDABLE}
        recipe = dict(version=number, dataset=row.dataset, model=row.model, model_args=dict(row.model_args),
                      params=row.params, optimizer=row.optimizer, lr=row.lr, epochs=row.epochs,
                      batch_size=row.batch_size)
        return cls(**{**recipe, **given}, overrides=changed)

    @property
    def source(self) -> DataSource:
        return DataSource(self.dataset, self.data_dir, self.image_folder, self.cache_dir)


# Flags that change a version's recipe, recorded in config.json as the run's overrides.
OVERRIDABLE = ("epochs", "batch_size", "lr", "seed", "loader", "eval_every", "amp", "compile", "deterministic",
               "image_folder")
# Settings that change what a run learns: a run folder made with other values cannot be continued with these.
RECIPE_FIELDS = ("version", "model", "model_args", "optimizer", "lr", "batch_size", "seed", "loader", "amp",
                 "compile", "deterministic", "image_folder")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must be present (ValueError says why not)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def prepare_torch(cfg: RunConfig) -> torch.device:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return torch.device(cfg.device)


def uses_channels_last(model: nn.Module) -> bool:
    """Convolutions run faster on NHWC memory (measured in README.md); the MLP has nothing to gain."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    return optimizers[cfg.optimizer](model.parameters(), lr=cfg.lr)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns the batch's summed loss and correct count, still on the device."""
    with autocast(images.device, amp):
        output = model(images)
        loss = F.nll_loss(output.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * len(labels), (output.argmax(dim=1) == labels).sum()


def to_model_input(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def check_finite(loss_sum: torch.Tensor, epoch: int, step: int, lr: float) -> float:
    value = loss_sum.item()
    if not math.isfinite(value):
        raise RunnerError(f"the loss became {value} in epoch {epoch} by step {step}; the run stopped and the "
                          f"checkpoint of epoch {epoch - 1} is kept. Try a lower learning rate, e.g. --lr {lr / 10:g}")
    return value


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device, amp: bool,
                epoch: int, lr: float, quiet: bool) -> tuple[float, float]:
    model.train()
    channels_last = uses_channels_last(model)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    bar = progress(loader, f"Epoch {epoch}", quiet)
    for step, (images, labels) in enumerate(bar, 1):
        images, labels = to_model_input(images, labels, device, channels_last)
        batch_loss, batch_correct = train_step(model, optimizer, images, labels, amp)
        loss_sum += batch_loss
        correct += batch_correct
        seen += len(labels)
        if step % REFRESH_EVERY == 0:
            bar.set_postfix(loss=f"{check_finite(loss_sum, epoch, step, lr) / seen:.4f}", refresh=False)
    return check_finite(loss_sum, epoch, len(loader), lr) / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool, quiet: bool,
             classes: int = 10) -> tuple[float, float, torch.Tensor]:
    """Test loss, accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    model.eval()
    channels_last = uses_channels_last(model)
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(classes * classes, device=device, dtype=torch.int64)
    for images, labels in progress(loader, "Testing", quiet):
        images, labels = to_model_input(images, labels, device, channels_last)
        with autocast(device, amp):
            output = model(images)
        loss_sum += F.nll_loss(output.float(), labels, reduction="sum")
        confusion += torch.bincount(labels * classes + output.argmax(dim=1), minlength=classes * classes)
    confusion = confusion.view(classes, classes).cpu()
    total = confusion.sum().item()
    return loss_sum.item() / total, confusion.trace().item() / total, confusion


def save_checkpoint(state: dict, path: Path) -> None:
    """Write beside the old checkpoint, read it back, then rename over it: a crash or a full disk keeps the old."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    load_checkpoint(temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    """Tensors and plain values only (weights_only=True), so a crafted file cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: the run stopped before its first epoch finished; "
                              "start it again") from None
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported" in str(error):
            raise CheckpointError(f"{path} holds objects other than tensors and numbers, which could run code; "
                                  "refusing to load it. Use a checkpoint written by this tool") from None
        raise CheckpointError(f"{path} is damaged ({type(error).__name__}): delete the run folder and train "
                              "again") from None
    except Exception as error:
        raise CheckpointError(f"{path} is damaged ({type(error).__name__}): delete the run folder and train "
                              "again") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        raise CheckpointError(f"{path} is not a checkpoint of this tool: delete the run folder and train again")
    return state


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_metrics(path: Path, metrics: list) -> None:
    lines = [",".join(METRIC_COLUMNS)]
    for row in metrics:
        lines.append(",".join("" if row[name] is None else repr(row[name]) for name in METRIC_COLUMNS))
    write_atomically(path, "\n".join(lines) + "\n")


def read_metrics(path: Path) -> list:
    with open(path, newline="") as f:
        return [{name: (float(value) if value else None) for name, value in row.items()} for row in csv.DictReader(f)]


def read_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    try:
        saved = json.loads(path.read_text())
        return RunConfig(**{f.name: saved[f.name] for f in fields(RunConfig)})
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a run folder (no {CONFIG}): give a folder made by a run") from None
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is damaged ({type(error).__name__}: {error}): delete the run folder and "
                              "train again") from None


def write_config(run_dir: Path, cfg: RunConfig, classes: list) -> None:
    record = {**asdict(cfg), "classes": classes, "torch": torch.__version__, "torchvision": torchvision.__version__,
              "python": sys.version.split()[0], "written": datetime.now().isoformat(timespec="seconds")}
    write_atomically(run_dir / CONFIG, json.dumps(record, indent=2) + "\n")


def epochs_done(run_dir: Path) -> int:
    """Completed epochs in a run folder, read from its checkpoint; 0 when there is none yet."""
    if not (Path(run_dir) / CHECKPOINT).exists():
        return 0
    return int(load_checkpoint(Path(run_dir) / CHECKPOINT)["epoch"])


def new_run_dir(parent: Path, name: str) -> Path:
    """parent/name-YYYYmmdd-HHMMSS, with -2, -3 ... when that exists already."""
    base = Path(parent) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    candidate, suffix = base, 2
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


def fit(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> list:
    """Train cfg.epochs epochs (continuing a run folder's checkpoint when resume), recording after each one."""
    run_dir = Path(run_dir)
    device = prepare_torch(cfg)
    model = build_model(cfg.model, cfg.model_args).to(device)
    if uses_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    shuffle_generator = torch.Generator().manual_seed(cfg.seed)
    eval_generator = torch.Generator().manual_seed(cfg.seed + 1)
    metrics, done = [], 0
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT)
        if state["version"] != cfg.version:
            raise CheckpointError(f"{run_dir / CHECKPOINT} belongs to version {state['version']}, but "
                                  f"{run_dir / CONFIG} says version {cfg.version}: the folder is mixed up; "
                                  "train again in a new folder")
        done = int(state["epoch"])
        if done >= cfg.epochs:
            raise RunnerError(f"{run_dir} already finished {done} epochs: pass --epochs N with N > {done} to "
                              "extend it")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{run_dir / CHECKPOINT} does not fit version {cfg.version}'s model "
                                  f"({type(error).__name__}): train again in a new folder") from None
        shuffle_generator.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        metrics = list(state["metrics"])
    train_loader, test_loader, classes = make_loaders(cfg.source, cfg.loader, cfg.batch_size, device,
                                                      shuffle_generator, eval_generator)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, cfg, classes)
    step_model = torch.compile(model) if cfg.compile else model
    print(f"Model Parameter Count: {count_parameters(model)}")
    print("Training...", flush=True)
    try:
        for epoch in range(done + 1, cfg.epochs + 1):
            started = time.perf_counter()
            train_loss, train_acc = train_epoch(step_model, train_loader, optimizer, device, cfg.amp, epoch,
                                                cfg.lr, quiet)
            line = f"Epoch {epoch} / {cfg.epochs} | Train Loss: {train_loss:.4f} | Train Acc: {train_acc:.4f}"
            test_loss = test_acc = None
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                test_loss, test_acc, _ = evaluate(step_model, test_loader, device, cfg.amp, quiet)
                line += f" | Test Loss: {test_loss:.4f} | Test Acc: {test_acc:.4f}"
            metrics.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                                test_acc=test_acc, lr=cfg.lr, seconds=round(time.perf_counter() - started, 3)))
            save_checkpoint(dict(version=cfg.version, epoch=epoch, model=model.state_dict(),
                                 optimizer=optimizer.state_dict(), shuffle_rng=shuffle_generator.get_state(),
                                 torch_rng=torch.get_rng_state(),
                                 cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                                 metrics=metrics, classes=classes), run_dir / CHECKPOINT)
            write_metrics(run_dir / METRICS, metrics)
            print(line, flush=True)
    finally:
        if metrics:
            plots.plot_curves(metrics, VERSIONS[cfg.version].seed_test_acc, run_dir / CURVES,
                              f"Version {cfg.version}")
    print("Training complete!")
    print(f"Test Loss: {metrics[-1]['test_loss']:.4f} | Test Acc: {metrics[-1]['test_acc']:.4f}", flush=True)
    return metrics


def load_trained(run_dir: Path, device: torch.device) -> tuple[RunConfig, nn.Module, list]:
    """A saved run's config, its model with the last checkpoint's weights (in eval mode), and its class names."""
    cfg = read_config(run_dir)
    state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    model = build_model(cfg.model, cfg.model_args)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"{Path(run_dir) / CHECKPOINT} does not fit version {cfg.version}'s model "
                              f"({type(error).__name__}): train again in a new folder") from None
    return cfg, model.to(device).eval(), list(state["classes"])


def evaluate_run(run_dir: Path, device: torch.device, source: DataSource, quiet: bool) -> dict:
    """Test a saved run on its test split: loss, accuracy, per-class accuracy and confusion.png."""
    cfg, model, classes = load_trained(run_dir, device)
    test = load_split(source, train=False)
    check_classes(classes, test.classes, source.image_folder or cfg.dataset)
    if uses_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    loader = ResidentLoader(test, cfg.batch_size, device)
    loss, accuracy, confusion = evaluate(model, loader, device, False, quiet, len(classes))
    per_class = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
    plots.plot_confusion(confusion, classes, Path(run_dir) / "confusion.png", f"Version {cfg.version}")
    return dict(loss=loss, accuracy=accuracy, per_class=dict(zip(classes, per_class)))


@torch.no_grad()
def predict(run_dir: Path, images: list, device: torch.device, top: int = 3) -> list:
    """The top classes with probabilities for each image file, resized to the model's input."""
    cfg, model, classes = load_trained(run_dir, device)
    channels, size = DATASETS[cfg.dataset].channels, DATASETS[cfg.dataset].size
    batch = torch.stack([load_image(path, channels, size) for path in images]).to(device)
    probabilities = model(batch).exp()
    best = probabilities.topk(min(top, len(classes)), dim=1)
    return [[(classes[index], value) for value, index in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(best.values, best.indices)]
