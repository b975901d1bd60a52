from torch import nn
from torch.nn import functional as F


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


class FinalPool(nn.MaxPool2d):
    """airbench94's 3x3 max-pool over the last feature map (for 32x32 images, all of it), or over the whole map where
    it is smaller: images under 25 pixels, such as a recipe's early epochs at a smaller size."""

    def __init__(self):
        super().__init__(3)

    def forward(self, x):
        return F.max_pool2d(x, min(3, x.shape[-2], x.shape[-1]))


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
        self.net = nn.Sequential(*groups, FinalPool(), nn.Flatten(), nn.Linear(channels, classes, bias=False))
        self.scale = scale

    def forward(self, x):
        return (self.net(x) * self.scale).log_softmax(dim=1)
