"""Datasets, and the two ways of feeding them to a model.

The default keeps each split resident on the training device as one uint8 tensor and serves batches by indexing
it with a seeded permutation: no PIL, no worker processes, no host copies per batch. The classic torchvision
DataLoader loop of the seed stays behind `--loader torchvision` as the reference the benchmark compares against.
"""
import hashlib
import json
import math
import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import ToTensor
from tqdm import tqdm

from configs import DATASETS
from errors import DataError

TORCHVISION_CLASSES = {
    "mnist": torchvision.datasets.MNIST,
    "fashion_mnist": torchvision.datasets.FashionMNIST,
    "cifar10": torchvision.datasets.CIFAR10,
}
CLASSES_PER_MODEL = 10
CLASSIC_WORKERS = 4


@dataclass
class Split:
    """A whole split in memory: uint8 images (N, C, H, W) exactly as stored, int64 labels, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list


@dataclass(frozen=True)
class DataSource:
    """Where a version's images come from: its torchvision dataset under data_dir, or a user's image folder."""

    dataset: str
    data_dir: str
    image_folder: str | None = None
    cache_dir: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return DATASETS[self.dataset].channels, DATASETS[self.dataset].size


def progress(iterable, description: str, quiet: bool = False, total: int | None = None):
    """A tqdm bar on stderr, shown only to a person watching a terminal."""
    return tqdm(iterable, desc=description, total=total, disable=quiet or not sys.stderr.isatty(), file=sys.stderr,
                dynamic_ncols=True)


def image_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def _check_idx(path: Path) -> tuple:
    """Catch a truncated or foreign IDX file before torchvision fails on it with an assertion; returns its shape."""
    with open(path, "rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 3:
            raise DataError(f"{path} is not an uint8 IDX file: delete it so it is downloaded again, or replace it")
        dims_bytes = f.read(4 * header[3])
    if len(dims_bytes) < 4 * header[3]:
        raise DataError(f"{path} is truncated: delete it so it is downloaded again, or replace it")
    dims = struct.unpack(f">{header[3]}I", dims_bytes)
    expected = 4 + len(dims_bytes) + math.prod(dims)
    if path.stat().st_size != expected:
        raise DataError(f"{path} has {path.stat().st_size} bytes where its header promises {expected}: "
                        "delete it so it is downloaded again, or replace it")
    return dims


def _download(source: DataSource, folder: Path, missing: list) -> None:
    cls = TORCHVISION_CLASSES[source.dataset]
    try:
        os.makedirs(source.data_dir, exist_ok=True)
        cls(root=source.data_dir, train=True, download=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise DataError(f"{DATASETS[source.dataset].title} is not in {folder} and could not be downloaded ({reason}): "
                        f"put {', '.join(missing)} there, or point --data-dir at a folder that has them") from None


def _prepare(source: DataSource) -> None:
    """Download what is missing, then check every file, so a damaged one is named instead of crashing a reader."""
    cls = TORCHVISION_CLASSES[source.dataset]
    if source.dataset == "cifar10":
        folder = Path(source.data_dir) / cls.base_folder
        files = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
        missing = [name for name, _ in files if not (folder / name).exists()]
        if missing:
            _download(source, folder, missing)
        for name, md5 in files:
            if not check_integrity(str(folder / name), md5):
                raise DataError(f"{folder / name} fails its integrity check (MD5): delete it so it is downloaded "
                                "again, or replace it with the original")
        return
    folder = Path(source.data_dir) / cls.__name__ / "raw"
    names = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    missing = [name for name in names if not (folder / name).exists()]
    if missing:
        _download(source, folder, missing)
    shapes = {name: _check_idx(folder / name) for name in names}
    for images, labels in zip(names[0::2], names[1::2]):
        if shapes[images][0] != shapes[labels][0] or len(shapes[images]) != 3 or len(shapes[labels]) != 1:
            raise DataError(f"{folder / images} and {folder / labels} do not match ({shapes[images]} images, "
                            f"{shapes[labels]} labels): delete both so they are downloaded again")


def _split_folder(source: DataSource, train: bool) -> Path:
    return Path(source.image_folder) / ("train" if train else "test")


def torchvision_dataset(source: DataSource, train: bool, transform=None) -> Dataset:
    """The split as torchvision reads it; with ToTensor as transform this is the seed's classic input path."""
    if source.image_folder:
        channels, size = source.shape
        folder = _split_folder(source, train)
        dataset = _image_folder(folder, transform, image_mode(channels))
        _decode(dataset.samples[0][0], image_mode(channels), size)
        return dataset
    _prepare(source)
    cls = TORCHVISION_CLASSES[source.dataset]
    return cls(root=source.data_dir, train=train, download=False, transform=transform)


class _ConvertTo:
    """ImageFolder's loader: opens a file in the version's colour mode (picklable for worker processes)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, path: str) -> Image.Image:
        with Image.open(path) as image:
            return image.convert(self.mode)


def _image_folder(folder: Path, transform=None, mode: str = "RGB") -> torchvision.datasets.ImageFolder:
    try:
        return torchvision.datasets.ImageFolder(str(folder), transform=transform, loader=_ConvertTo(mode))
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"{folder} is not a usable image folder ({error}): it needs one sub-folder of images "
                        "per class") from None


def _decode(path: str, mode: str, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise DataError(f"{path} cannot be read as an image ({type(error).__name__}): fix or remove it") from None
    if image.size != (size, size):
        raise DataError(f"{path} is {image.size[0]}x{image.size[1]} but this version takes {size}x{size} images: "
                        "resize the folder's images or choose a version of that size")
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _load_image_folder(source: DataSource, train: bool) -> Split:
    """Decode a folder once, in parallel, and cache the tensors under cache_dir keyed by every file's size and time."""
    channels, size = source.shape
    folder = _split_folder(source, train)
    listing = _image_folder(folder)
    stats = []
    for path, _ in listing.samples:
        status = os.stat(path)
        stats.append((os.path.relpath(path, folder), status.st_size, status.st_mtime_ns))
    key = hashlib.sha256(json.dumps([str(folder.resolve()), channels, size, stats]).encode()).hexdigest()[:20]
    cache = Path(source.cache_dir) / f"imagefolder-{key}.pt" if source.cache_dir else None
    if cache and cache.exists():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            return Split(saved["images"], saved["labels"], list(saved["classes"]))
        except Exception:
            pass  # a damaged cache is rebuilt below
    mode = image_mode(channels)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        decoded = pool.map(lambda sample: _decode(sample[0], mode, size), listing.samples)
        arrays = list(progress(decoded, f"Decoding {folder}", total=len(listing.samples)))
    split = Split(torch.from_numpy(np.stack(arrays)), torch.tensor(listing.targets, dtype=torch.int64),
                  list(listing.classes))
    if cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache.with_name(cache.name + ".tmp")
            torch.save({"images": split.images, "labels": split.labels, "classes": split.classes}, temporary)
            os.replace(temporary, cache)
        except OSError:
            pass  # the cache only saves time; without it the folder is decoded again next run
    return split


def load_split(source: DataSource, train: bool) -> Split:
    """The whole split as uint8 tensors, pixel for pixel what torchvision's dataset hands to ToTensor."""
    if source.image_folder:
        return _load_image_folder(source, train)
    dataset = torchvision_dataset(source, train)
    if source.dataset == "cifar10":
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    else:
        images = dataset.data.unsqueeze(1)
    return Split(images, torch.as_tensor(dataset.targets, dtype=torch.int64), list(dataset.classes))


def check_classes(train_classes: list, test_classes: list, where: str) -> None:
    if train_classes != test_classes:
        raise DataError(f"{where}: train/ and test/ have different class folders: give both the same classes")
    if len(train_classes) != CLASSES_PER_MODEL:
        raise DataError(f"{where} has {len(train_classes)} classes but the models predict {CLASSES_PER_MODEL}: "
                        f"use a folder with exactly {CLASSES_PER_MODEL} class folders")


class ResidentLoader:
    """Batches cut from a split kept whole on the device; order from a seeded generator, none when it is None."""

    def __init__(self, split: Split, batch_size: int, device: torch.device, generator: torch.Generator | None = None):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        count = len(self.labels)
        order = None
        if self.generator is not None:
            order = torch.randperm(count, generator=self.generator).to(self.labels.device, non_blocking=True)
        for start in range(0, count, self.batch_size):
            if order is None:
                images, labels = self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]
            else:
                index = order[start:start + self.batch_size]
                images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
            yield images.to(torch.float32).div(255), labels


class SplitDataset(Dataset):
    """A Split served the way torchvision's datasets serve theirs: a PIL image per item, through a transform."""

    def __init__(self, split: Split, transform=None):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, index: int):
        pixels = self.split.images[index].numpy()
        image = Image.fromarray(pixels[0], mode="L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
        return (self.transform(image) if self.transform else image), int(self.split.labels[index])


def classic_loader(dataset: Dataset, batch_size: int, device: torch.device, generator: torch.Generator,
                   shuffle: bool) -> DataLoader:
    """The seed's loop: PIL and ToTensor in worker processes, every epoch."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=CLASSIC_WORKERS,
                      pin_memory=device.type == "cuda", generator=generator)


def make_loaders(source: DataSource, loader: str, batch_size: int, device: torch.device,
                 shuffle_generator: torch.Generator, eval_generator: torch.Generator):
    """Train and test loaders and the class names; the test loader keeps its own generator so it draws nothing
    from the training's random streams."""
    if loader == "resident":
        train, test = load_split(source, True), load_split(source, False)
        classes = (train.classes, test.classes)
        loaders = (ResidentLoader(train, batch_size, device, shuffle_generator),
                   ResidentLoader(test, batch_size, device))
    else:
        train = torchvision_dataset(source, True, ToTensor())
        test = torchvision_dataset(source, False, ToTensor())
        classes = (list(train.classes), list(test.classes))
        loaders = (classic_loader(train, batch_size, device, shuffle_generator, shuffle=True),
                   classic_loader(test, batch_size, device, eval_generator, shuffle=False))
    check_classes(*classes, source.image_folder or DATASETS[source.dataset].title)
    return loaders[0], loaders[1], classes[0]


def load_image(path: str, channels: int, size: int) -> torch.Tensor:
    """One user image as the model expects it: converted to the version's colour mode and resized, as ToTensor."""
    try:
        with Image.open(path) as image:
            image = image.convert(image_mode(channels)).resize((size, size), Image.BILINEAR)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise DataError(f"{path} cannot be read as an image ({type(error).__name__}): give an image file") from None
    return ToTensor()(image)
