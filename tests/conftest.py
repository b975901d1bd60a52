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
    config.addinivalue_line("markers", "pictures: the test's runs draw their pictures (the others save a 1x1 PNG)")


def pytest_collection_modifyitems(items):
    """The slow tests first (in their order, then the others in theirs): a long test handed out last would keep
    one worker busy while the others have nothing left."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# One thread: tiny batches gain nothing from more, and on a busy machine OpenMP threads waiting on each other stall.
# The processes the tests start inherit it, unless a test gives --threads.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def pictures_drawn_only_where_asked(request, monkeypatch):
    """In this process (and the processes a test forks from it: tests/forked.py), a picture is drawn only in the
    tests marked `pictures`: elsewhere a saved picture is a 1x1 PNG and a figure for TensorBoard a 1x1 image under
    its tag, as drawing took a third of a tiny run's time. The figures are still made, so that what feeds them
    runs."""
    if request.node.get_closest_marker("pictures"):
        return
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from runner import plots

    def save(figure, f) -> None:
        Image.new("RGB", (1, 1), "white").save(f, format="PNG")
        plots.plt.close(figure)

    def add_figure(writer, tag, figure, global_step=None, close=True, walltime=None) -> None:
        plots.plt.close(figure)
        writer.add_image(tag, np.zeros((3, 1, 1), dtype=np.uint8), global_step, walltime)

    monkeypatch.setattr(plots, "save", save)
    monkeypatch.setattr(SummaryWriter, "add_figure", add_figure)


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


CIFAR100_CLASSES = [f"fine{index:02d}" for index in range(100)]


def spread_labels(count: int, low: int, high: int, seed: int) -> np.ndarray:
    """count labels from low to high, both ends among them, shuffled."""
    labels = np.linspace(low, high, count).round().astype(np.int64)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def write_cifar100_pickle(path: Path, entry: dict, protocol: int = 2) -> None:
    """As the real files are pickled: numpy's array reconstructor under its name from before numpy 2."""
    data = pickle.dumps(entry, protocol=protocol).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(data)


def make_cifar100(root: Path, monkeypatch, train: int = 20, test: int = 10) -> Path:
    """A cifar-100-python of tiny splits whose labels span all 100 classes; torchvision's expected MD5 sums are
    patched to match them."""
    import torchvision

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", train, 5), ("test", test, 6)):
        images = np.random.default_rng(seed).integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)
        labels = spread_labels(count, 0, 99, seed)
        write_cifar100_pickle(folder / name, {"batch_label": f"{name} batch", "fine_labels": labels.tolist(),
                                              "coarse_labels": (labels // 5).tolist(), "data": images,
                                              "filenames": [f"{index}.png" for index in range(count)]})
    write_cifar100_pickle(folder / "meta", {"fine_label_names": CIFAR100_CLASSES,
                                            "coarse_label_names": [f"coarse{index:02d}" for index in range(20)]})
    sums = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in ("train", "test", "meta")}
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", sums["train"]]])
    monkeypatch.setattr(cls, "test_list", [["test", sums["test"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": sums["meta"]})
    return root


def make_svhn(root: Path, monkeypatch, train: int = 12, test: int = 6) -> Path:
    """train_32x32.mat and test_32x32.mat of tiny splits, MATLAB files as scipy writes them: X (32, 32, 3, N) and y
    (N, 1) uint8 of 1-10, 10 for the digit 0; torchvision's expected MD5 sums are patched to match them."""
    import scipy.io
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    split_list = dict(torchvision.datasets.SVHN.split_list)
    for name, count, seed in (("train", train, 7), ("test", test, 8)):
        images = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3, count), dtype=np.uint8)
        labels = spread_labels(count, 1, 10, seed).astype(np.uint8).reshape(-1, 1)
        path = root / f"{name}_32x32.mat"
        scipy.io.savemat(path, {"X": images, "y": labels})
        url, filename, _ = split_list[name]
        split_list[name] = [url, filename, hashlib.md5(path.read_bytes()).hexdigest()]
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", split_list)
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

    def build_and_watch(recipe, channels, classes):
        model = real_build(recipe, channels, classes)
        for module in model.modules():
            if isinstance(module, layer):
                module.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        return model

    monkeypatch.setattr(train, "build_model", build_and_watch)
    return seen
