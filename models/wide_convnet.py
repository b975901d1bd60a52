from torch import nn


class WideConvNet(nn.Module):
    """Three padded conv stages and a 256-unit head: about a million parameters, built to overfit."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 64, 5, padding="same"), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding="same"), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(128, 256, 3, padding="same"), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(256 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, classes), nn.LogSoftmax(dim=1),
        )

    def forward(self, x):
        return self.net(x)
