"""Where a run's images come from, which files that means, and what makes two sources the same, without torch or
decoding anything: the command line (--dry-run too) works these out before anything heavy is imported, and data.py
reads the files."""
from dataclasses import dataclass
from pathlib import Path

from runner.folders import list_image_folder, split_folder
from runner.settings import DATASETS

IDX_FILES = {True: ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
             False: ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]}
CIFAR_FILES = {True: [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"],
               False: ["test_batch", "batches.meta"]}

# Where each dataset keeps its files under --data-dir (SVHN in it itself) and which files each split has
# (torchvision's layout).
LAYOUTS = {"mnist": ("MNIST/raw", IDX_FILES), "fashion_mnist": ("FashionMNIST/raw", IDX_FILES),
           "cifar10": ("cifar-10-batches-py", CIFAR_FILES),
           "cifar100": ("cifar-100-python", {True: ["train", "meta"], False: ["test", "meta"]}),
           "svhn": ("", {True: ["train_32x32.mat"], False: ["test_32x32.mat"]})}
SVHN_CLASSES = [str(digit) for digit in range(10)]  # SVHN's labels are digits; torchvision names no classes for it


@dataclass(frozen=True)
class DataSource:
    """Where a version's images come from: its dataset under data_dir, or an image folder (resized to the
    version's size when `resize`); with `holdout`, that many training images are tested on instead of the test
    split (see holdout.py)."""

    dataset: str
    data_dir: str
    image_folder: str | None = None
    cache_dir: str | None = None
    resize: bool = False
    holdout: int = 0
    holdout_seed: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return DATASETS[self.dataset].channels, DATASETS[self.dataset].size

    @property
    def name(self) -> str:
        return self.image_folder or DATASETS[self.dataset].title

    @classmethod
    def of(cls, run) -> "DataSource":
        """A run's data source (run: settings.RunConfig)."""
        return cls(run.dataset, run.runtime.data_dir, run.runtime.image_folder, run.runtime.cache_dir,
                   run.identity.resize, run.identity.holdout, run.identity.holdout_seed)


def dataset_files(source: DataSource, train: bool) -> list[Path]:
    """The files of a dataset's split under its data_dir, present or not."""
    folder, names = LAYOUTS[source.dataset]
    return [Path(source.data_dir) / folder / name for name in names[train]]


def class_count(run) -> int:
    """How many classes a run's model predicts (run: settings.RunConfig): its image folder's, else its dataset's."""
    folder = run.identity.data.get("image_folder")
    return len(folder["classes"]) if folder else DATASETS[run.dataset].classes


def data_identity(source: DataSource) -> dict:
    """What makes two data sources the same for a run: the dataset, or an image folder's classes and sample
    counts (its path may change, e.g. on another machine) and whether it is resized. Under --holdout the test
    split is never read, so it is no part of it."""
    if not source.image_folder:
        return {"dataset": source.dataset}
    train = list_image_folder(split_folder(source.image_folder, True))
    identity = {"classes": train[0], "train": len(train[1])}
    if not source.holdout:
        identity["test"] = len(list_image_folder(split_folder(source.image_folder, False))[1])
    return {"dataset": source.dataset, "image_folder": {**identity, "resize": source.resize}}
