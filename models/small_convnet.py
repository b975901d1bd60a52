from torch import nn


class SmallConvNet(nn.Module):
    """Two unpadded 5x5 convolutions: fewer parameters than the MLP, yet it sees spatial structure."""

    def __init__(self, channels: int = 16, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(channels, channels, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * 4 * 4, classes), nn.LogSoftmax(dim=1),
        )

    def forward(self, x):
        return self.net(x)
