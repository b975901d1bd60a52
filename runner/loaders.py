"""Feeding a model: the resident loader (default) and the classic torchvision DataLoader loop (the reference).

Both follow one batch plan: a permutation per epoch from the shared seed's generator (the test split in order),
cut into global batches, each process taking its share of every global batch, so across processes every sample is
seen once per epoch. Each batch comes with its divisor, the share of the global batch this process stands for, so
that the loss is the mean over the global batch however it is split.

The resident loader keeps the split on the device as uint8 and makes a batch with one gather: random crops from
the reflect-padded image and horizontal flips are index arithmetic inside that gather, on the device, with no
per-image Python and no PIL.
"""
import signal
import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from data import Split, check_classes, classic_dataset, cut_holdout, load_split
from runner.devices import stop_keeping_freed_memory
from runner.errors import DataError
from runner.settings import DATASETS, Recipe, RunConfig
from runner.sources import DataSource

CLASSIC_WORKERS = 4


@dataclass
class BatchPlan:
    """Which samples this process takes in each global batch of an epoch. For training, a last partial batch
    smaller than the number of processes is dropped (a process would have nothing to learn from); for testing
    (`training=False`) nothing is dropped, and a process may hold an empty share."""

    count: int
    batch_size: int
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    training: bool = True

    def __len__(self) -> int:
        full, rest = divmod(self.count, self.batch_size)
        if not self.training:
            return full + (1 if rest else 0)
        return full + (1 if rest >= self.world_size and not self.drop_last else 0)

    def batches(self, generator: torch.Generator | None) -> list:
        """[(this process's sample indices, divisor)] for one epoch, shuffled when a generator is given."""
        order = torch.randperm(self.count, generator=generator) if generator is not None else torch.arange(self.count)
        plan = []
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start:start + self.batch_size]
            share = batch.tensor_split(self.world_size)[self.rank]
            plan.append((share, len(batch) / self.world_size))
        return plan


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Positions outside [0, size) mirrored back inside, without repeating the edge (as reflect padding)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


class Augmentation:
    """Per-image random crops (reflect padding) and flips, drawn per epoch for every sample from this process's
    generator. `alternating` flips a random half of the images in epoch 1 (drawn from `flip_generator`, the same in
    every process) and all of them in every other epoch after that."""

    def __init__(self, padding: int, flip: str, generator: torch.Generator, flip_generator: torch.Generator):
        self.padding, self.flip, self.generator = padding, flip, generator
        self.flip_generator = flip_generator
        self.first_flips = None

    def draw(self, count: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(offsets (count, 2) in [0, 2 * padding], flips (count,)) for this epoch."""
        offsets = torch.randint(0, 2 * self.padding + 1, (count, 2), generator=self.generator)
        if self.flip == "random":
            flips = torch.rand(count, generator=self.generator) < 0.5
        elif self.flip == "alternating":
            if self.first_flips is None:
                self.first_flips = torch.rand(count, generator=self.flip_generator) < 0.5
            flips = self.first_flips ^ (epoch % 2 == 0)
        else:
            flips = torch.zeros(count, dtype=torch.bool)
        return offsets, flips


def gather(images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor | None = None,
           flips: torch.Tensor | None = None, padding: int = 0) -> torch.Tensor:
    """images[index] (uint8), each cropped at its offset from the reflect-padded image and flipped where asked,
    in one indexing operation. The result has channels-last strides, the layout the conv models run fastest in."""
    height, width = images.shape[-2:]
    if offsets is None:
        return images.index_select(0, index)
    rows = reflect(offsets[:, :1] - padding + torch.arange(height, device=images.device), height)
    columns = reflect(offsets[:, 1:] - padding + torch.arange(width, device=images.device), width)
    columns = torch.where(flips[:, None], columns.flip(1), columns)
    return images[index[:, None, None], :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


class ResidentLoader:
    """Batches cut from a split kept whole on the device: (images in [0, 1], labels, divisor)."""

    def __init__(self, split: Split, plan: BatchPlan, device: torch.device, shuffle: torch.Generator | None = None,
                 augmentation: Augmentation | None = None):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.plan, self.shuffle, self.augmentation = plan, shuffle, augmentation

    def __len__(self) -> int:
        return len(self.plan)

    def batches(self, epoch: int = 1):
        device = self.labels.device
        drawn = self.augmentation.draw(len(self.labels), epoch) if self.augmentation else None
        if drawn:
            drawn = [tensor.to(device) for tensor in drawn]
        plan = self.plan.batches(self.shuffle)
        if not plan:
            return
        # One copy of the epoch's indices to the device, not one per step: a step never waits on a copy from the host.
        indices = torch.cat([index for index, _ in plan]).to(device).split([len(index) for index, _ in plan])
        for index, (_, divisor) in zip(indices, plan):
            if drawn:
                images = gather(self.images, index, drawn[0][index], drawn[1][index], self.augmentation.padding)
            else:
                images = gather(self.images, index)
            yield images.to(torch.float32).div(255), self.labels.index_select(0, index), divisor


class SplitDataset(Dataset):
    """A Split served the way torchvision's datasets serve theirs: a PIL image per item, through a transform."""

    def __init__(self, split: Split, transform=None):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        pixels = self.split.images[index].numpy()
        image = Image.fromarray(pixels[0], mode="L") if pixels.shape[0] == 1 else Image.fromarray(
            pixels.transpose(1, 2, 0))
        return (self.transform(image) if self.transform else image), int(self.split.labels[index])


def prepare_worker(worker: int) -> None:
    """A terminal's Ctrl-C reaches the workers too; only the main process decides to stop (and then ends them). A
    worker decodes images, with glibc's own memory settings: it does not keep freed memory as a CPU run does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_keeping_freed_memory()


class ClassicLoader:
    """The seed's loop: PIL images through torchvision transforms in CLASSIC_WORKERS worker processes, every epoch.
    Each pass draws its workers' base seed from `workers_seed`; a pass that draws nothing random (testing) gives
    None and takes a fresh generator, so testing never moves the training's streams."""

    def __init__(self, dataset: Dataset, plan: BatchPlan, device: torch.device,
                 shuffle: torch.Generator | None, workers_seed: torch.Generator | None):
        self.dataset, self.plan, self.shuffle, self.workers_seed = dataset, plan, shuffle, workers_seed
        self.pin_memory = device.type == "cuda"

    def __len__(self) -> int:
        return len(self.plan)

    def batches(self, epoch: int = 1):
        batches = self.plan.batches(self.shuffle)
        with warnings.catch_warnings():
            # The seed's 4 workers are kept on purpose (the benchmark of docs/speed.md compares with them), on any
            # core count.
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            loader = iter(DataLoader(
                self.dataset, batch_sampler=[index.tolist() for index, _ in batches if len(index)],
                num_workers=CLASSIC_WORKERS, pin_memory=self.pin_memory,
                generator=self.workers_seed if self.workers_seed is not None else torch.Generator(),
                persistent_workers=False, worker_init_fn=prepare_worker))
        for index, divisor in batches:
            if len(index):
                images, labels = next(loader)
                yield images, labels, divisor
            else:  # an empty share of a last test batch, so that every process tests as many batches
                image = self.dataset[0][0]
                yield image.new_empty(0, *image.shape), torch.empty(0, dtype=torch.int64), divisor


def classic_transform(size: int, padding: int, flip: str, resize: bool):
    """torchvision's transforms for the classic loop: (Resize,) RandomCrop with reflect padding, RandomHorizontalFlip,
    ToTensor. Normalisation is the model's first layer, in both loops."""
    from torchvision import transforms

    steps = [transforms.Resize((size, size))] if resize else []
    if padding:
        steps.append(transforms.RandomCrop(size, padding=padding, padding_mode="reflect"))
    if flip == "random":
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps + [transforms.ToTensor()])


def augmentation_of(recipe: Recipe, generators: dict) -> Augmentation | None:
    """The recipe's augmentation on the device, drawing from the training state's generators; None without one."""
    if recipe.crop_padding == 0 and recipe.flip == "none":
        return None
    return Augmentation(recipe.crop_padding, recipe.flip, generators["augment"], generators["flip"])


EVAL_BATCH = 1024


def eval_batch_size(recipe) -> int:
    """Tests take batches of at least EVAL_BATCH images (the training batch when larger): a test holds no
    gradients, so a batch that size fits wherever training does, and fewer, larger batches test faster."""
    return max(recipe.batch_size, EVAL_BATCH)


def make_loaders(run: RunConfig, source: DataSource, splits: dict, state, device: torch.device):
    """Train and test loaders on one batch plan per split; the test split in order, drawing nothing random.
    state: the TrainingState, whose generators and group the loaders follow."""
    recipe, rank, world = run.recipe, state.group.rank, state.group.size
    if run.identity.loader == "resident":
        train, test = splits[True], splits[False]
        loaders = (ResidentLoader(train, BatchPlan(len(train.labels), recipe.batch_size, recipe.drop_last, rank, world),
                                  device, state.generators["shuffle"], augmentation_of(recipe, state.generators)),
                   ResidentLoader(test, BatchPlan(len(test.labels), eval_batch_size(recipe), rank=rank,
                                                  world_size=world, training=False), device))
    else:
        size = DATASETS[run.dataset].size
        resize = source.resize and not source.holdout  # a decoded split has the version's size already
        transforms = (classic_transform(size, recipe.crop_padding, recipe.flip, resize),
                      classic_transform(size, 0, "none", resize))
        if source.holdout:  # the two parts of the decoded training split, served as torchvision serves a split
            train, test = (SplitDataset(splits[part], transform) for part, transform in zip((True, False),
                                                                                              transforms))
        else:
            train, test = (classic_dataset(source, split, transform) for split, transform in zip((True, False),
                                                                                                  transforms))
        loaders = (ClassicLoader(train, BatchPlan(len(train), recipe.batch_size, recipe.drop_last, rank, world),
                                 device, state.generators["shuffle"], state.generators["workers"]),
                   ClassicLoader(test, BatchPlan(len(test), eval_batch_size(recipe), rank=rank, world_size=world,
                                                 training=False), device, None, None))
    if not len(loaders[0]):
        raise DataError(f"{source.name}: the training split is smaller than one batch of {recipe.batch_size} and the "
                        "last partial batch is dropped: give a smaller --batch-size")
    return loaders


def load_splits(run: RunConfig, source: DataSource, resume: bool) -> tuple[dict, list]:
    """The splits the run needs in memory ({True: trained on, False: tested on}) and the class names: both for
    the resident loader and under --holdout, which cuts both parts from the training split and never reads the
    test split; for the classic loop otherwise only the training split, and only when input layers are fitted to
    it."""
    resident = run.identity.loader == "resident"
    splits = {}
    if resident or source.holdout or (not resume and (run.recipe.normalize or run.recipe.whitening)):
        splits[True] = load_split(source, True)
        if source.holdout:
            splits[True], splits[False] = cut_holdout(source, splits[True])
        elif resident:
            splits[False] = load_split(source, False)
    if len(splits) == 2:
        classes = splits[True].classes
        check_classes(classes, None if source.holdout else splits[False].classes, source.name)
    else:
        classes = list(classic_dataset(source, True).classes)
        check_classes(classes, list(classic_dataset(source, False).classes), source.name)
    return splits, classes
