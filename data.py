"""Datasets: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100 and SVHN under --data-dir, or a folder of images per class.

Where the images come from (DataSource, its files, its identity) is runner/sources.py's, which imports no torch.
Each split is decoded once into uint8 tensors (N, C, H, W), pixel for pixel what torchvision hands to ToTensor, and
cached under the cache folder, keyed by every source file's name, size and modification time. torchvision is
imported only to download, to decode a dataset that is not cached yet, and for the classic loader, so a run
starts fast. Every file is checked before it is decoded, so a damaged one is named with what to do about it: CIFAR-100
and SVHN by their structure, as a copy of them whose MD5 differs from torchvision's is only warned about.
"""
import hashlib
import json
import math
import os
import pickle
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from runner.console import STOP, progress
from runner.errors import DataError
from runner.files import atomic_write
from runner.folders import list_image_folder, split_folder
from runner.holdout import HoldoutError, held_out
from runner.images import decode_image, image_mode
from runner.sources import SVHN_CLASSES, DataSource, dataset_files
from runner.settings import DATASETS

CACHE_FORMAT = 2  # raise when decoding changes, so no cache of an older decoding is ever served


@dataclass
class Split:
    """A whole split in memory: uint8 images (N, C, H, W) exactly as stored, int64 labels, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list


def torchvision_class(dataset: str):
    import torchvision

    return {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
            "cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
            "svhn": torchvision.datasets.SVHN}[dataset]


def _split_argument(dataset: str, train: bool) -> dict:
    """How torchvision's class is told the split: SVHN's by name, the others' by train=."""
    return {"split": "train" if train else "test"} if dataset == "svhn" else {"train": train}


def _torchvision_sums(dataset: str) -> dict:
    """torchvision's MD5 sum of each file of a CIFAR or SVHN copy, by file name."""
    cls = torchvision_class(dataset)
    if dataset == "svhn":
        return {name: md5 for _, name, md5 in cls.split_list.values()}
    return dict(cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]])


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


def _reason(error: Exception) -> str:
    """An exception's message as one line: its last, or the exception's name when it has none."""
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


def _download(source: DataSource, train: bool, folder: Path, missing: list) -> None:
    try:
        os.makedirs(source.data_dir, exist_ok=True)
        torchvision_class(source.dataset)(root=source.data_dir, download=True, **_split_argument(source.dataset, train))
    except Exception as error:
        raise DataError(f"{DATASETS[source.dataset].title} is not in {folder} and could not be downloaded "
                        f"({_reason(error)}): put {', '.join(missing)} there, or point --data-dir at a folder that "
                        "has them") from None


def _dataset_files(source: DataSource, train: bool) -> list:
    """The split's files, downloaded when missing."""
    files = dataset_files(source, train)
    missing = [path.name for path in files if not path.exists()]
    if missing:
        _download(source, train, files[0].parent, missing)
    return files


REPLACE = "delete it so it is downloaded again, or replace it"


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays, nothing else: a CIFAR-100 copy is read whatever its MD5,
    and a pickle may otherwise run any code it names."""

    KNOWN = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
             ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
             ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.KNOWN:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-100 file never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
    except Exception as error:  # a damaged or foreign pickle fails in many ways
        raise DataError(f"{path} is not a pickled CIFAR-100 file ({_reason(error)}): {REPLACE}") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} holds a {type(entry).__name__}, not CIFAR-100's dict: {REPLACE}")
    return entry


def _field(content: dict, key: str, path: Path):
    if key not in content:
        raise DataError(f"{path} has no '{key}': {REPLACE}")
    return content[key]


def _checked_labels(path: Path, labels: np.ndarray, images: int, low: int, high: int) -> np.ndarray:
    """The labels as int64, once there is one per image and each lies from low to high."""
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: its labels are not a list of whole numbers: {REPLACE}")
    if len(labels) != images:
        raise DataError(f"{path} has {images} images but {len(labels)} labels: {REPLACE}")
    if ((labels < low) | (labels > high)).any():
        raise DataError(f"{path} has labels outside {low}-{high} ({labels.min()} to {labels.max()}): {REPLACE}")
    return labels.astype(np.int64)


def _read_cifar100(files: list) -> Split:
    """A split of CIFAR-100 (its images, its fine labels, the meta file's names for them), checked by its
    structure."""
    data_path, meta_path = files
    channels, size, classes = DATASETS["cifar100"].channels, DATASETS["cifar100"].size, DATASETS["cifar100"].classes
    entry = _unpickle(data_path)
    images = _field(entry, "data", data_path)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != channels * size * size:
        found = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{data_path}: 'data' is {found} where CIFAR-100 has uint8 (N, {channels * size * size}): "
                        f"{REPLACE}")
    labels = _checked_labels(data_path, np.asarray(_field(entry, "fine_labels", data_path)), len(images), 0,
                             classes - 1)
    names = _field(_unpickle(meta_path), "fine_label_names", meta_path)
    if not isinstance(names, list) or len(names) != classes:
        raise DataError(f"{meta_path}: 'fine_label_names' is not a list of {classes} names: {REPLACE}")
    return Split(torch.from_numpy(images.reshape(-1, channels, size, size)), torch.from_numpy(labels), names)


def _read_svhn(files: list) -> Split:
    """A split of SVHN, checked by its structure: X holds the images as (H, W, C, N), y the labels 1-10, where 10
    is the digit 0 (torchvision hands it over as 0)."""
    import scipy.io

    (path,) = files
    channels, size, classes = DATASETS["svhn"].channels, DATASETS["svhn"].size, DATASETS["svhn"].classes
    try:
        content = scipy.io.loadmat(str(path))
    except Exception as error:  # scipy fails on a damaged or foreign file in many ways
        raise DataError(f"{path} is not a MATLAB file that scipy reads ({_reason(error)}): {REPLACE}") from None
    images, labels = _field(content, "X", path), _field(content, "y", path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (size, size, channels):
        raise DataError(f"{path}: 'X' is {images.dtype} {images.shape} where SVHN has uint8 ({size}, {size}, "
                        f"{channels}, N): {REPLACE}")
    if labels.ndim != 2 or labels.shape[1] != 1:
        raise DataError(f"{path}: 'y' has the shape {labels.shape} where SVHN has (N, 1): {REPLACE}")
    labels = _checked_labels(path, labels[:, 0], images.shape[3], 1, classes)
    labels[labels == classes] = 0
    return Split(torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1))), torch.from_numpy(labels),
                 list(SVHN_CLASSES))


STRUCTURE_READERS = {"cifar100": _read_cifar100, "svhn": _read_svhn}
_warned_copies = set()  # the files whose MD5 this process has warned about


def _read_by_structure(source: DataSource, files: list) -> Split:
    """The split read by its structure; a file whose MD5 is not torchvision's gets one warning, as it may well be
    another good copy."""
    from torchvision.datasets.utils import check_integrity

    split = STRUCTURE_READERS[source.dataset](files)
    sums = _torchvision_sums(source.dataset)
    for path in files:
        if path not in _warned_copies and not check_integrity(str(path), sums[path.name]):
            _warned_copies.add(path)
            print(f"warning: {path}'s MD5 differs from torchvision's: it may be another copy; decoding it by its "
                  "structure", file=sys.stderr)
    return split


def _check_dataset_files(source: DataSource, files: list) -> None:
    """Every file of the split intact: IDX headers and sizes, CIFAR-10's MD5 sums, the structure of CIFAR-100's and
    SVHN's."""
    if source.dataset in STRUCTURE_READERS:
        _read_by_structure(source, files)
        return
    if source.dataset == "cifar10":
        from torchvision.datasets.utils import check_integrity

        sums = _torchvision_sums("cifar10")
        for path in files:
            if not check_integrity(str(path), sums[path.name]):
                raise DataError(f"{path} fails its integrity check (MD5): delete it so it is downloaded again, or "
                                "replace it with the original")
        return
    images, labels = (_check_idx(path) for path in files)
    if images[0] != labels[0] or len(images) != 3 or len(labels) != 1:
        raise DataError(f"{files[0]} and {files[1]} do not match ({images} images, {labels} labels): delete both "
                        "so they are downloaded again")


def _decode_dataset(source: DataSource, train: bool, files: list) -> Split:
    """The split's own files decoded as torchvision decodes them (IDX, CIFAR-10's pickled batches once their MD5
    sums match, CIFAR-100's and SVHN's files once their structure does), without torchvision's dataset classes,
    which look at the other split's files too."""
    if source.dataset in STRUCTURE_READERS:
        return _read_by_structure(source, files)
    _check_dataset_files(source, files)
    if source.dataset == "cifar10":
        *batches, meta = files
        arrays, labels = [], []
        for path in batches:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            arrays.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += entry["labels"]
        with open(meta, "rb") as f:
            classes = pickle.load(f, encoding="latin1")["label_names"]
        return Split(torch.from_numpy(np.concatenate(arrays)), torch.tensor(labels, dtype=torch.int64), list(classes))
    images_path, labels_path = files
    count, rows, columns = _check_idx(images_path)
    images = np.frombuffer(images_path.read_bytes(), dtype=np.uint8, offset=16).reshape(count, 1, rows, columns)
    labels = np.frombuffer(labels_path.read_bytes(), dtype=np.uint8, offset=8).astype(np.int64)
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels),
                 list(torchvision_class(source.dataset).classes))


def _decode_folder(source: DataSource, train: bool) -> Split:
    channels, size = source.shape
    folder = split_folder(source.image_folder, train)
    classes, samples = list_image_folder(folder)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        decoded = pool.map(lambda sample: decode_image(sample[0], channels, size, source.resize), samples)
        arrays = []
        try:
            for array in progress(decoded, f"Decoding {folder}", total=len(samples)):
                STOP.check()
                arrays.append(array)
        finally:
            pool.shutdown(cancel_futures=True)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return Split(torch.from_numpy(np.stack(arrays)), labels, classes)


def _cache_key(source: DataSource, train: bool, paths: list) -> str:
    stats = []
    for path in paths:
        status = os.stat(path)
        stats.append((str(path), status.st_size, status.st_mtime_ns))
    where = str(Path(source.image_folder or source.data_dir).resolve())
    fields = [CACHE_FORMAT, source.dataset, where, train, source.shape, source.resize, stats]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:20]


def _read_cache(path: Path) -> Split | None:
    """The cached split, or None when there is none or it is damaged (then it is rebuilt)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return Split(saved["images"], saved["labels"], list(saved["classes"]))
    except Exception:
        return None


def _write_cache(path: Path, split: Split) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save({"images": split.images, "labels": split.labels,
                                                 "classes": split.classes}, f))
    except OSError:
        pass  # the cache only saves time; without it the data is decoded again next run


def load_split(source: DataSource, train: bool) -> Split:
    """The whole split as uint8 tensors, from the cache when its source files are unchanged."""
    if source.image_folder:
        paths = [path for path, _ in list_image_folder(split_folder(source.image_folder, train))[1]]
        decode = lambda: _decode_folder(source, train)  # noqa: E731
    else:
        paths = _dataset_files(source, train)
        decode = lambda: _decode_dataset(source, train, paths)  # noqa: E731
    if not source.cache_dir:
        return decode()
    kind = "imagefolder" if source.image_folder else source.dataset
    cache = Path(source.cache_dir) / f"{kind}-{_cache_key(source, train, paths)}.pt"
    split = _read_cache(cache)
    if split is None:
        split = decode()
        _write_cache(cache, split)
    return split


def check_classes(train_classes: list, test_classes: list | None, where: str) -> None:
    """The classes the model predicts, as many as the data has; test_classes None when no test split is read
    (--holdout)."""
    if test_classes is not None and train_classes != test_classes:
        raise DataError(f"{where}: train/ and test/ have different class folders: give both the same classes")
    if len(train_classes) < 2:
        raise DataError(f"{where} has {len(train_classes)} class folder(s): a classifier needs at least two")


class _ConvertTo:
    """A PIL loader that opens a file in the version's colour mode (picklable for worker processes)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, path: str):
        from PIL import Image

        with Image.open(path) as image:
            return image.convert(self.mode)


def holdout_indices(source: DataSource, labels: list, classes: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(the training split's indices trained on, those held out) under --holdout."""
    try:
        held = held_out(labels, source.holdout, source.holdout_seed, classes)
    except HoldoutError as error:
        raise DataError(str(error)) from None
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[held] = False
    return kept.nonzero().squeeze(1), torch.tensor(held, dtype=torch.int64)


def cut_holdout(source: DataSource, split: Split) -> tuple[Split, Split]:
    """The training split as (the part trained on, the part held out to test on)."""
    return tuple(Split(split.images.index_select(0, index), split.labels.index_select(0, index), split.classes)
                 for index in holdout_indices(source, split.labels.tolist(), split.classes))


def _classic_class(dataset: str):
    """torchvision's class that reads the dataset for the classic loader; for CIFAR-100 and SVHN one that trusts
    the structure check here over torchvision's MD5 sums."""
    if dataset in STRUCTURE_READERS:
        from runner.classic_readers import CLASSIC_READERS

        return CLASSIC_READERS[dataset]
    return torchvision_class(dataset)


def classic_dataset(source: DataSource, train: bool, transform=None) -> Dataset:
    """The split as torchvision reads it (a torchvision dataset or ImageFolder), through `transform`."""
    import torchvision

    if not source.image_folder:
        _check_dataset_files(source, _dataset_files(source, train))
        return _classic_class(source.dataset)(root=source.data_dir, download=False, transform=transform,
                                              **_split_argument(source.dataset, train))

    class VisibleImageFolder(torchvision.datasets.ImageFolder):
        """ImageFolder over the same listing as the resident path: hidden files and folders are not data."""

        def find_classes(self, directory):
            classes = list_image_folder(split_folder(source.image_folder, train))[0]
            return classes, {name: index for index, name in enumerate(classes)}

        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return list(list_image_folder(split_folder(source.image_folder, train))[1])

    channels = source.shape[0]
    return VisibleImageFolder(str(split_folder(source.image_folder, train)), transform=transform,
                              loader=_ConvertTo(image_mode(channels)))


def load_image(path: str, channels: int, size: int) -> torch.Tensor:
    """One user image as the model expects it: converted to the version's colour mode, resized, scaled to [0, 1]
    as ToTensor does."""
    return torch.tensor(decode_image(path, channels, size, resize=True)).float().div(255)  # a copy: PIL's is read-only
