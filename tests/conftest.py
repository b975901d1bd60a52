"""Tiny datasets in torchvision's on-disk formats, so the real reading code runs offline and in seconds."""
import csv
import hashlib
import io
import os
import pickle
import struct
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import main  # noqa: E402
import torch  # noqa: E402

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real processes, torchrun, Slurm arrays, real data or long searches; "
                            "-m 'not slow' leaves the quick tier")


# One thread: tiny batches gain nothing from more, and on a busy machine OpenMP threads waiting on each other stall.
torch.set_num_threads(1)



@pytest.fixture(autouse=True)
def runs_on_the_cpu(request, monkeypatch):
    """Outside tests/test_gpu.py every run is a CPU run, on a machine with a GPU too: there `auto` would take the
    GPU, and the CPU's promises (exact resume, two gloo processes on one machine) are what these tests check. The
    subprocesses inherit the hidden GPU through CUDA_VISIBLE_DEVICES."""
    if request.module.__name__ == "test_gpu":
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def learnable_images(count: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) noise with a bright patch whose place gives the class: a model can learn it quickly."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, channels, size, size), dtype=np.uint8)
    for image, label in zip(images, labels):
        row, column = divmod(int(label), 5)
        image[:, 4 + row * 10:10 + row * 10, 2 + column * 5:6 + column * 5] = 250
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, name: str = "MNIST", train: int = 200, test: int = 100) -> Path:
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = learnable_images(count, 1, 28, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def make_cifar(root: Path, monkeypatch, per_batch: int = 40, test: int = 50) -> Path:
    """A cifar-10-batches-py of tiny batches; torchvision's expected MD5 sums are patched to match them."""
    import torchvision

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}

    def dump(name: str, entry: dict) -> None:
        data = pickle.dumps(entry)
        (folder / name).write_bytes(data)
        sums[name] = hashlib.md5(data).hexdigest()

    for index in range(1, 6):
        images, labels = learnable_images(per_batch, 3, 32, index)
        dump(f"data_batch_{index}", {"data": images.reshape(per_batch, -1), "labels": labels.tolist()})
    images, labels = learnable_images(test, 3, 32, 9)
    dump("test_batch", {"data": images.reshape(test, -1), "labels": labels.tolist()})
    dump("batches.meta", {"label_names": CIFAR_CLASSES})
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[name, sums[name]] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": sums["batches.meta"]})
    return root


def make_image_folder(root: Path, channels: int = 3, size: int = 32, train: int = 60, test: int = 30,
                      classes: int = 10) -> Path:
    for split, count, seed in (("train", train, 3), ("test", test, 4)):
        images, labels = learnable_images(count, channels, size, seed)
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class{int(label) % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = image[0] if channels == 1 else image.transpose(1, 2, 0)
            Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return root


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory) -> None:
    """Decoded datasets go to a cache of the test session, never to the user's, also from child processes."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    """MNIST and Fashion-MNIST, both tiny."""
    make_mnist(tmp_path / "data", "FashionMNIST")
    return make_mnist(tmp_path / "data")


@pytest.fixture
def cifar_dir(tmp_path: Path, monkeypatch) -> Path:
    return make_cifar(tmp_path / "data", monkeypatch)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


def run_cli(*argv) -> tuple[int, str, str]:
    """main.main in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main.main([str(word) for word in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch):
    """run_cli from inside tmp_path, so default folders (runs/, data/) land there; cache kept in tmp_path too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return run_cli


def read_metrics(run: Path) -> list:
    """A run folder's metrics.csv, one dict of strings per epoch."""
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))

def real_data_dir() -> Path:
    path = os.environ.get("DATA_DIR")
    if not path or not Path(path).is_dir():
        pytest.skip("real data not available: set DATA_DIR to a folder with MNIST/, FashionMNIST/ and cifar10-jpeg/")
    return Path(path)


def watch_output_dtypes(monkeypatch, layer: type) -> set:
    """The dtypes that the layers of this type compute in, in every model train.fit builds from now on."""
    import train

    seen, real_build = set(), train.build_model

    def build_and_watch(recipe, channels):
        model = real_build(recipe, channels)
        for module in model.modules():
            if isinstance(module, layer):
                module.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        return model

    monkeypatch.setattr(train, "build_model", build_and_watch)
    return seen
