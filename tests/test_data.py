"""Both input paths read the same pixels; the resident one shuffles reproducibly; bad data gets a clear message."""
import os

import pytest
import torch
import torchvision
from torchvision.transforms import ToTensor

from conftest import make_image_folder, make_mnist
from data import DataSource, Split, classic_dataset, load_split
from runner.errors import DataError
from runner.loaders import BatchPlan, ResidentLoader


def assert_same_as_torchvision(source: DataSource, train: bool):
    split = load_split(source, train)
    reference = classic_dataset(source, train, ToTensor())
    assert len(split.labels) == len(reference) > 0
    loader = ResidentLoader(split, BatchPlan(len(split.labels), 7), torch.device("cpu"))
    index = 0
    for images, labels, _ in loader.batches():
        for image, label in zip(images, labels):
            expected, expected_label = reference[index]
            assert torch.equal(image, expected), index
            assert int(label) == expected_label
            index += 1
    assert index == len(reference)


@pytest.mark.parametrize("train", [True, False])
def test_resident_pixels_equal_torchvision_mnist(mnist_dir, train):
    assert_same_as_torchvision(DataSource("mnist", str(mnist_dir)), train)


def test_resident_pixels_equal_torchvision_cifar10(cifar_dir):
    assert_same_as_torchvision(DataSource("cifar10", str(cifar_dir)), True)


def test_resident_pixels_equal_torchvision_image_folder(image_folder, tmp_path):
    source = DataSource("cifar10", "unused", str(image_folder), str(tmp_path / "cache"))
    assert_same_as_torchvision(source, True)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    assert_same_as_torchvision(source, True)  # now from the cache


def test_grey_image_folder_matches_torchvision(tmp_path):
    folder = make_image_folder(tmp_path / "grey", channels=1, size=28)
    assert_same_as_torchvision(DataSource("mnist", "unused", str(folder), str(tmp_path / "cache")), False)


def test_image_folder_cache_is_rebuilt_when_a_file_changes(image_folder, tmp_path):
    source = DataSource("cifar10", "unused", str(image_folder), str(tmp_path / "cache"))
    before = load_split(source, True)
    first = sorted((image_folder / "train").rglob("*.png"))[0]
    torchvision.transforms.functional.to_pil_image(torch.zeros(3, 32, 32, dtype=torch.uint8)).save(first)
    os.utime(first, ns=(1, 1))
    after = load_split(source, True)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    assert not torch.equal(before.images, after.images)
    assert after.images[0].sum() == 0


def sample_orders(generator_seed: int, epochs: int) -> list:
    split = Split(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), torch.arange(50), [])
    loader = ResidentLoader(split, BatchPlan(50, 8), torch.device("cpu"), torch.Generator().manual_seed(generator_seed))
    return [torch.cat([labels for _, labels, _ in loader.batches(epoch)]).tolist() for epoch in range(1, epochs + 1)]


def test_every_sample_appears_once_per_epoch():
    for order in sample_orders(0, 3):
        assert sorted(order) == list(range(50))


def test_order_is_reproducible_for_a_seed_and_differs_between_epochs():
    first, second = sample_orders(0, 2)
    assert sample_orders(0, 2) == [first, second]
    assert first != second
    assert sample_orders(1, 1)[0] != first


def test_batches_keep_the_last_partial_batch():
    split = Split(torch.zeros(50, 1, 2, 2, dtype=torch.uint8), torch.zeros(50, dtype=torch.int64), [])
    sizes = [len(labels) for _, labels, _ in ResidentLoader(split, BatchPlan(50, 16), torch.device("cpu")).batches()]
    assert sizes == [16, 16, 16, 2]


def test_resident_images_are_divided_by_255_exactly_as_to_tensor():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    images, _, _ = next(ResidentLoader(Split(values, torch.zeros(1, dtype=torch.int64), []), BatchPlan(1, 1),
                                       torch.device("cpu")).batches())
    assert torch.equal(images, ToTensor()(values[0, 0].numpy()).unsqueeze(0))


# Damaged and missing data: one message that names the file and what to do.

def test_truncated_idx_file_is_named(mnist_dir):
    path = mnist_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte has .* bytes .* delete it"):
        load_split(DataSource("mnist", str(mnist_dir)), True)


def test_foreign_idx_file_is_named(mnist_dir):
    path = mnist_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an uint8 IDX file"):
        load_split(DataSource("mnist", str(mnist_dir)), False)


def test_cifar_batch_failing_its_checksum_is_named(cifar_dir):
    path = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="data_batch_3 fails its integrity check"):
        load_split(DataSource("cifar10", str(cifar_dir)), True)


def refuse_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "urlopen", no_network, raising=False)
    monkeypatch.setattr(torchvision.datasets.utils.urllib.request, "urlopen", no_network)


@pytest.mark.parametrize("dataset, needed", [("fashion_mnist", "train-images-idx3-ubyte"),
                                             ("cifar10", "data_batch_1")])
def test_missing_dataset_without_network_says_what_to_put_where(tmp_path, monkeypatch, dataset, needed):
    refuse_network(monkeypatch)
    with pytest.raises(DataError) as error:
        load_split(DataSource(dataset, str(tmp_path / "empty")), True)
    message = str(error.value)
    assert "could not be downloaded" in message and needed in message and "--data-dir" in message
    assert str(tmp_path / "empty") in message


def test_unreadable_image_in_a_folder_is_named(image_folder, tmp_path):
    broken = sorted((image_folder / "train").rglob("*.png"))[5]
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{broken.name} cannot be read as an image"):
        load_split(DataSource("cifar10", "unused", str(image_folder), str(tmp_path / "cache")), True)


def test_image_of_the_wrong_size_is_named(image_folder, tmp_path):
    with pytest.raises(DataError, match="is 32x32 but this version takes 28x28"):
        load_split(DataSource("mnist", "unused", str(image_folder), str(tmp_path / "cache")), True)


def test_a_folder_of_five_classes_trains_a_model_of_five_outputs_and_one_class_is_refused(cli, tmp_path):
    folder = make_image_folder(tmp_path / "five", classes=5)
    code, _, err = cli("6", "--epochs", 1, "--image-folder", folder, "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert len(checkpoint["classes"]) == 5 and checkpoint["model"]["net.15.weight"].shape[0] == 5
    one = make_image_folder(tmp_path / "one", classes=1)
    code, _, err = cli("6", "--epochs", 1, "--image-folder", one, "--out", tmp_path / "run1", "--quiet")
    assert code == 1 and "has 1 class folder(s): a classifier needs at least two" in err


def test_dataset_of_the_fake_writer_is_what_torchvision_reads(tmp_path):
    root = make_mnist(tmp_path, "FashionMNIST", train=30, test=20)
    split = load_split(DataSource("fashion_mnist", str(root)), True)
    assert split.images.shape == (30, 1, 28, 28) and split.classes[0] == "T-shirt/top"
