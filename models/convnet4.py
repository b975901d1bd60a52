from torch import nn


class ConvNet4(nn.Module):
    """Four conv -> pool -> relu stages for 32x32 RGB; batch-norm and dropout are the ladder's last two rungs."""

    def __init__(self, width: int, hidden: int, batch_norm: bool = False, dropout: float = 0.0, classes: int = 10):
        super().__init__()
        layers, in_channels = [], 3
        for kernel, multiple in zip((5, 3, 3, 3), (1, 2, 4, 8)):
            out_channels = width * multiple
            layers += [nn.Conv2d(in_channels, out_channels, kernel, padding="same"), nn.MaxPool2d(2), nn.ReLU()]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            in_channels = out_channels
        layers.append(nn.Flatten())
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(in_channels * 2 * 2, hidden), nn.ReLU(), nn.Linear(hidden, classes), nn.LogSoftmax(dim=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
