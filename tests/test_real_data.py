"""Short runs on the real datasets (DATA_DIR: MNIST/, FashionMNIST/ and cifar10-jpeg/); skipped without them."""
import pytest

from conftest import read_metrics, real_data_dir

pytestmark = pytest.mark.slow  # real data


def final_test_accuracy(run_dir) -> float:
    return float(read_metrics(run_dir)[-1]["test_acc"])


def test_version_1_learns_mnist_in_one_epoch(cli, tmp_path):
    data = real_data_dir()
    code, out, err = cli("1", "--epochs", 1, "--data-dir", data, "--out", tmp_path / "v1", "--quiet")
    assert code == 0, err
    assert out.splitlines()[0] == "Model Parameter Count: 79510"
    assert final_test_accuracy(tmp_path / "v1") >= 0.84


def test_version_6_learns_a_fifth_of_the_cifar10_jpeg_tree_in_two_epochs(cli, tmp_path):
    """Every fifth image of each class (10,000 to train, 2,000 to test): the real JPEG files, at a fifth of the
    decoding and training time."""
    source = real_data_dir() / "cifar10-jpeg"
    for split in ("train", "test"):
        for class_dir in sorted((source / split).iterdir()):
            target = tmp_path / "fifth" / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[::5]:
                (target / image.name).symlink_to(image)
    code, _, err = cli("6", "--epochs", 2, "--image-folder", tmp_path / "fifth", "--out", tmp_path / "v6", "--quiet")
    assert code == 0, err
    assert final_test_accuracy(tmp_path / "v6") > 0.25


def test_version_1_at_a_learning_rate_that_diverges_at_once_fails(cli, tmp_path):
    """The review's case: at lr 1e6 the loss is astronomic from the first window on, so no later window exceeds
    100 times the first; the rule known before any step (10 ln C at chance accuracy) stops it."""
    code, out, err = cli("1", "--lr", "1e6", "--epochs", 2, "--data-dir", real_data_dir(), "--out", tmp_path / "v1",
                         "--quiet")
    assert code == 1 and "Training complete!" not in out and "in epoch 1" in err, err
