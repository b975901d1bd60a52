"""A ladder of your own on Fashion-MNIST: your own small conv-net, a wider one, then mixup as an idea.

    python main.py --ladder examples/fashion_ladder.py list
    python main.py --ladder examples/fashion_ladder.py 1-3
    python main.py --ladder examples/fashion_ladder.py ablate 3 --seeds 0-4

Each row trains for 5 epochs; on a 2-core CPU an epoch of row 2 takes about 25 s (docs/extending.md has the
measured table).
"""
from torch import nn

from ladder import model, rung


@model(takes=(1, 28))
class TwoConvNet(nn.Module):
    """Two 3x3 convolutions with batch norm, each followed by a 2x2 max-pool, then a linear classifier."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, classes), nn.LogSoftmax(dim=1),
        )

    def forward(self, x):
        return self.net(x)


rung(1, "fashion_mnist", {
    "two-conv net": {"model": "TwoConvNet"},
    "Adam": {"optimizer": "adam", "lr": 2e-3, "batch_size": 128},
}, params=20_586, remark="A small conv-net of our own with Adam", epochs=5)
rung(2, "fashion_mnist", {"wider": {"model.width": 32}}, params=50_378,
     remark="Twice the channels: more capacity")
rung(3, "fashion_mnist", {"mixup": {"batch_transform": "mixup", "batch_transform.alpha": 0.2}}, params=50_378,
     remark="Mixup blends pairs of images and their labels")
