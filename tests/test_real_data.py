"""Short runs on the real datasets (DATA_DIR: MNIST/, FashionMNIST/ and cifar10-jpeg/); skipped without them."""
import csv

from conftest import real_data_dir


def final_test_accuracy(run_dir) -> float:
    with open(run_dir / "metrics.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["test_acc"])


def test_version_1_learns_mnist_in_one_epoch(cli, tmp_path):
    data = real_data_dir()
    code, out, err = cli("1", "--epochs", 1, "--data-dir", data, "--out", tmp_path / "v1", "--quiet")
    assert code == 0, err
    assert out.splitlines()[0] == "Model Parameter Count: 79510"
    assert final_test_accuracy(tmp_path / "v1") >= 0.84


def test_version_6_learns_the_cifar10_jpeg_tree_in_one_epoch(cli, tmp_path):
    data = real_data_dir()
    code, _, err = cli("6", "--epochs", 1, "--image-folder", data / "cifar10-jpeg", "--out", tmp_path / "v6",
                       "--quiet")
    assert code == 0, err
    assert final_test_accuracy(tmp_path / "v6") > 0.25
