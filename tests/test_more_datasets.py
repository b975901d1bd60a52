"""CIFAR-100 and SVHN, read from tiny files in torchvision's formats: decoded as torchvision hands them to ToTensor,
checked by their structure with one line per defect, another copy's MD5 only warned about, and cached."""
import pickle

import numpy as np
import pytest
import scipy.io
import torch

import data
from conftest import make_cifar100, make_svhn, write_cifar100_pickle
from data import DataSource, classic_dataset, load_split
from runner.errors import DataError
from runner.settings import DATASETS
from test_data import assert_same_as_torchvision, refuse_network


@pytest.fixture
def cifar100_dir(tmp_path, monkeypatch):
    return make_cifar100(tmp_path / "data", monkeypatch)


@pytest.fixture
def svhn_dir(tmp_path, monkeypatch):
    return make_svhn(tmp_path / "data", monkeypatch)


def read_cifar100(path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_the_table_knows_both_datasets():
    assert (DATASETS["cifar100"].classes, sum(DATASETS["cifar100"].class_sizes)) == (100, 50000)
    assert (DATASETS["svhn"].classes, sum(DATASETS["svhn"].class_sizes)) == (10, 73257)
    assert DATASETS["mnist"].classes == 10


@pytest.mark.parametrize("train, count", [(True, 20), (False, 10)])
def test_cifar100_decodes_to_images_fine_labels_and_names(cifar100_dir, capsys, train, count):
    split = load_split(DataSource("cifar100", str(cifar100_dir)), train)
    assert split.images.shape == (count, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64 and {0, 99} <= set(split.labels.tolist()) <= set(range(100))
    assert split.classes[:2] == ["fine00", "fine01"] and len(split.classes) == 100
    assert capsys.readouterr().err == ""


def test_cifar100_pixels_are_channel_then_row_then_column(cifar100_dir):
    path = cifar100_dir / "cifar-100-python" / "train"
    entry = read_cifar100(path)
    entry["data"] = np.zeros_like(entry["data"])
    entry["data"][2, 1 * 1024 + 5 * 32 + 7] = 200  # green, row 5, column 7 of the third image
    write_cifar100_pickle(path, entry)
    images = load_split(DataSource("cifar100", str(cifar100_dir)), True).images
    assert images[2, 1, 5, 7] == 200 and images.sum() == 200


@pytest.mark.parametrize("train, count", [(True, 12), (False, 6)])
def test_svhn_decodes_with_ten_as_the_digit_0(svhn_dir, capsys, train, count):
    path = svhn_dir / f"{'train' if train else 'test'}_32x32.mat"
    stored = scipy.io.loadmat(path)["y"][:, 0]
    split = load_split(DataSource("svhn", str(svhn_dir)), train)
    assert split.images.shape == (count, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64 and 10 in stored
    assert split.labels.tolist() == [0 if label == 10 else int(label) for label in stored]
    assert split.classes == [str(digit) for digit in range(10)]
    assert capsys.readouterr().err == ""


def test_svhn_pixels_come_from_height_width_channel_number(svhn_dir):
    path = svhn_dir / "train_32x32.mat"
    content = scipy.io.loadmat(path)
    images = np.zeros_like(content["X"])
    images[5, 7, 1, 2] = 200  # row 5, column 7, green, of the third image
    scipy.io.savemat(path, {"X": images, "y": content["y"]})
    decoded = load_split(DataSource("svhn", str(svhn_dir)), True).images
    assert decoded[2, 1, 5, 7] == 200 and decoded.sum() == 200


@pytest.mark.parametrize("dataset", ["cifar100", "svhn"])
@pytest.mark.parametrize("train", [True, False])
def test_resident_pixels_equal_torchvision(tmp_path, monkeypatch, dataset, train):
    maker = make_cifar100 if dataset == "cifar100" else make_svhn
    assert_same_as_torchvision(DataSource(dataset, str(maker(tmp_path / "data", monkeypatch))), train)


def test_classic_dataset_names_svhn_classes(svhn_dir):
    assert classic_dataset(DataSource("svhn", str(svhn_dir)), False).classes == [str(digit) for digit in range(10)]


# Another copy: a file whose bytes differ from torchvision's but whose structure is right is read, with a warning.

def copy_of_cifar100(folder) -> None:
    """The training file pickled again in another protocol: the same data in other bytes."""
    path = folder / "cifar-100-python" / "train"
    write_cifar100_pickle(path, read_cifar100(path), protocol=4)


def copy_of_svhn(folder) -> None:
    """The training file saved again compressed: the same data in other bytes."""
    path = folder / "train_32x32.mat"
    content = scipy.io.loadmat(path)
    scipy.io.savemat(path, {"X": content["X"], "y": content["y"]}, do_compression=True)


@pytest.mark.parametrize("dataset, copy, name", [("cifar100", copy_of_cifar100, "train"),
                                                 ("svhn", copy_of_svhn, "train_32x32.mat")])
def test_another_copy_is_warned_about_once_and_decoded(tmp_path, monkeypatch, capsys, dataset, copy, name):
    maker = make_cifar100 if dataset == "cifar100" else make_svhn
    source = DataSource(dataset, str(maker(tmp_path / "data", monkeypatch)))
    original = load_split(source, True)
    copy(tmp_path / "data")
    again = load_split(source, True)
    classic = classic_dataset(source, True)
    warning = capsys.readouterr().err.splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: {tmp_path / 'data'}")
    assert f"{name}'s MD5 differs from torchvision's" in warning[0] and "decoding it by its structure" in warning[0]
    assert torch.equal(again.images, original.images) and torch.equal(again.labels, original.labels)
    assert len(classic) == len(original.labels)


@pytest.mark.parametrize("dataset, reader", [("cifar100", "_read_cifar100"), ("svhn", "_read_svhn")])
def test_a_second_load_comes_from_the_cache(tmp_path, monkeypatch, dataset, reader):
    maker = make_cifar100 if dataset == "cifar100" else make_svhn
    source = DataSource(dataset, str(maker(tmp_path / "data", monkeypatch)), cache_dir=str(tmp_path / "cache"))
    first = load_split(source, False)
    assert len(list((tmp_path / "cache").glob(f"{dataset}-*.pt"))) == 1

    def not_again(files):
        raise AssertionError("decoded again")

    monkeypatch.setitem(data.STRUCTURE_READERS, dataset, not_again)
    second = load_split(source, False)
    assert torch.equal(second.images, first.images) and second.classes == first.classes


# Damaged or foreign files: one line naming the file and what to do.

def assert_one_line_about(path, source: DataSource, train: bool, expected: str) -> None:
    with pytest.raises(DataError) as error:
        load_split(source, train)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and expected in message
    assert message.endswith("delete it so it is downloaded again, or replace it")


def remove_labels(entry):
    del entry["fine_labels"]


def narrow_rows(entry):
    entry["data"] = entry["data"][:, :3000]


def wide_pixels(entry):
    entry["data"] = entry["data"].astype(np.int64)


def label_100(entry):
    entry["fine_labels"][3] = 100


def one_label_short(entry):
    entry["fine_labels"].pop()


@pytest.mark.parametrize("damage, expected", [
    (remove_labels, "has no 'fine_labels'"),
    (narrow_rows, "'data' is uint8 (20, 3000) where CIFAR-100 has uint8 (N, 3072)"),
    (wide_pixels, "'data' is int64 (20, 3072)"),
    (label_100, "has labels outside 0-99 (0 to 100)"),
    (one_label_short, "has 20 images but 19 labels"),
])
def test_cifar100_structural_defect_is_named(cifar100_dir, damage, expected):
    path = cifar100_dir / "cifar-100-python" / "train"
    entry = read_cifar100(path)
    damage(entry)
    write_cifar100_pickle(path, entry)
    assert_one_line_about(path, DataSource("cifar100", str(cifar100_dir)), True, expected)


def test_cifar100_meta_without_100_names_is_named(cifar100_dir):
    path = cifar100_dir / "cifar-100-python" / "meta"
    write_cifar100_pickle(path, {"fine_label_names": ["only one"]})
    assert_one_line_about(path, DataSource("cifar100", str(cifar100_dir)), False,
                          "'fine_label_names' is not a list of 100 names")


def test_foreign_cifar100_file_is_named(cifar100_dir):
    path = cifar100_dir / "cifar-100-python" / "test"
    path.write_bytes(b"<html>not found</html>")
    assert_one_line_about(path, DataSource("cifar100", str(cifar100_dir)), False, "is not a pickled CIFAR-100 file")


class MakesAFolder:
    """Unpickling it calls os.mkdir: what a pickle may do when it is read blindly."""

    def __init__(self, where):
        self.where = where

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.where),)


def test_a_cifar100_pickle_that_would_run_code_is_refused_unrun(cifar100_dir, tmp_path):
    path = cifar100_dir / "cifar-100-python" / "train"
    entry = read_cifar100(path)
    entry["filenames"] = MakesAFolder(tmp_path / "made")
    path.write_bytes(pickle.dumps(entry, protocol=2))
    assert_one_line_about(path, DataSource("cifar100", str(cifar100_dir)), True, "mkdir, which a CIFAR-100 file")
    assert not (tmp_path / "made").exists()


def without_labels(content):
    del content["y"]


def small_images(content):
    content["X"] = content["X"][:28, :28]


def float_images(content):
    content["X"] = content["X"].astype(np.float64)


def label_0(content):
    content["y"][4, 0] = 0


def label_11(content):
    content["y"][4, 0] = 11


def one_more_label(content):
    content["y"] = np.concatenate([content["y"], content["y"][:1]])


def labels_in_a_row(content):
    content["y"] = content["y"].reshape(1, -1)


@pytest.mark.parametrize("damage, expected", [
    (without_labels, "has no 'y'"),
    (small_images, "'X' is uint8 (28, 28, 3, 12) where SVHN has uint8 (32, 32, 3, N)"),
    (float_images, "'X' is float64"),
    (label_0, "has labels outside 1-10 (0 to 10)"),
    (label_11, "has labels outside 1-10 (1 to 11)"),
    (one_more_label, "has 12 images but 13 labels"),
    (labels_in_a_row, "'y' has the shape (1, 12) where SVHN has (N, 1)"),
])
def test_svhn_structural_defect_is_named(svhn_dir, damage, expected):
    path = svhn_dir / "train_32x32.mat"
    content = scipy.io.loadmat(path)
    content = {"X": content["X"], "y": content["y"]}
    damage(content)
    scipy.io.savemat(path, content)
    assert_one_line_about(path, DataSource("svhn", str(svhn_dir)), True, expected)


def test_foreign_svhn_file_is_named(svhn_dir):
    path = svhn_dir / "test_32x32.mat"
    path.write_bytes(b"<html>not found</html>")
    assert_one_line_about(path, DataSource("svhn", str(svhn_dir)), False, "is not a MATLAB file that scipy reads")


@pytest.mark.parametrize("dataset, train, needed, folder", [
    ("cifar100", True, "train, meta", "cifar-100-python"),
    ("svhn", True, "train_32x32.mat", ""),
    ("svhn", False, "test_32x32.mat", ""),
])
def test_missing_files_without_network_say_what_to_put_where(tmp_path, monkeypatch, dataset, train, needed,
                                                             folder):
    refuse_network(monkeypatch)
    with pytest.raises(DataError) as error:
        load_split(DataSource(dataset, str(tmp_path / "empty")), train)
    message = str(error.value)
    assert "\n" not in message and "Network is unreachable" in message
    assert f"not in {tmp_path / 'empty' / folder} and could not be downloaded" in message
    assert f"put {needed} there" in message and "--data-dir" in message
