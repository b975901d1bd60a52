from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with its scale frozen at 1 (only the shift learns) and a tiny eps, as airbench94 has it."""

    def __init__(self, channels: int, momentum: float):
        super().__init__(channels, eps=1e-12, momentum=momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """A bias-free 3x3 convolution whose first filters start as the identity (Dirac), so a fresh block passes its
    input through."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[:self.in_channels])


class ConvGroup(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, momentum: float):
        super().__init__(Conv(in_channels, out_channels), nn.MaxPool2d(2), BatchNorm(out_channels, momentum),
                         nn.GELU(), Conv(out_channels, out_channels), BatchNorm(out_channels, momentum), nn.GELU())


class AirbenchNet(nn.Module):
    """The airbench94 network: three conv groups without residuals, a max-pool over what is left and a bias-free
    linear layer whose output is scaled down by `scale`."""

    def __init__(self, widths: tuple = (64, 256, 256), momentum: float = 0.4, scale: float = 1 / 9,
                 in_channels: int = 3, classes: int = 10):
        super().__init__()
        groups, channels = [], in_channels
        for width in widths:
            groups.append(ConvGroup(channels, width, momentum))
            channels = width
        self.net = nn.Sequential(*groups, nn.MaxPool2d(3), nn.Flatten(), nn.Linear(channels, classes, bias=False))
        self.scale = scale

    def forward(self, x):
        return (self.net(x) * self.scale).log_softmax(dim=1)
