from torch import nn


class MLP(nn.Module):
    """One hidden layer over flattened 28x28 pixels: the ladder's baseline."""

    def __init__(self, hidden: int = 100, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, classes), nn.LogSoftmax(dim=1),
        )

    def forward(self, x):
        return self.net(x)
