"""The version table: one row per step of the ablation ladder, with the seed's published results, and the three
datasets the rows refer to."""
from dataclasses import dataclass, field



@dataclass(frozen=True)
class Dataset:
    title: str
    channels: int
    size: int


DATASETS = {
    "mnist": Dataset("MNIST", 1, 28),
    "fashion_mnist": Dataset("Fashion-MNIST", 1, 28),
    "cifar10": Dataset("CIFAR-10", 3, 32),
}


@dataclass(frozen=True)
class Version:
    number: int
    dataset: str
    model: str
    params: int
    optimizer: str
    lr: float
    seed_train_acc: float
    seed_test_acc: float
    remark: str
    model_args: dict = field(default_factory=dict)
    epochs: int = 25
    batch_size: int = 64


VERSIONS = {v.number: v for v in [
    Version(1, "mnist", "MLP", 79510, "sgd", 0.01, 0.95, 0.95,
            "We start with a simple MLP on MNIST"),
    Version(2, "fashion_mnist", "MLP", 79510, "sgd", 0.01, 0.87, 0.85,
            "MLP on MNIST is already good, so switch to Fashion-MNIST where there is room to improve"),
    Version(3, "fashion_mnist", "SmallConvNet", 9402, "sgd", 0.01, 0.88, 0.87,
            "A simple conv-net exploits spatial correlation: more accuracy with fewer params"),
    Version(4, "fashion_mnist", "WideConvNet", 963338, "sgd", 0.01, 0.90, 0.89,
            "An over-powered model tries to overfit, but with SGD it doesn't"),
    Version(5, "fashion_mnist", "WideConvNet", 963338, "adam", 1e-3, 0.99, 0.92,
            "Just switching to Adam overfits, yet test accuracy is good too"),
    Version(6, "cifar10", "ConvNet4", 33466, "adam", 1e-3, 0.75, 0.66,
            "A simple conv-net on CIFAR-10 doesn't fit even the train set",
            {"width": 8, "hidden": 32}),
    Version(7, "cifar10", "ConvNet4", 33706, "adam", 1e-3, 0.87, 0.66,
            "Batch normalization fixes the vanishing gradient and improves learning",
            {"width": 8, "hidden": 32, "batch_norm": True}),
    Version(8, "cifar10", "ConvNet4", 655882, "adam", 1e-3, 0.99, 0.76,
            "A bigger conv-net overfits the dataset",
            {"width": 32, "hidden": 256, "batch_norm": True}),
    Version(9, "cifar10", "ConvNet4", 655882, "adam", 1e-3, 0.95, 0.81,
            "Dropout trades some train accuracy for better test accuracy",
            {"width": 32, "hidden": 256, "batch_norm": True, "dropout": 0.5}),
]}
