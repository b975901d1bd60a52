"""Layers that adapt the input to a model and are fitted to the training split once, when a run starts: their
numbers travel in the model's state, so eval and predict use exactly what training used."""
import torch
import torch.nn.functional as F
from torch import nn

WHITENING_IMAGES = 5000
WHITENING_EPS = 5e-4
MIN_STD = 1 / 255  # a channel that varies by less than one grey level is taken as constant, never divided by 0


class Normalize(nn.Module):
    """Per-channel standardisation with the training split's mean and std."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels, 1, 1))
        self.register_buffer("std", torch.ones(channels, 1, 1))

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """images: the training split as uint8 (N, C, H, W), scaled to [0, 1] as the loaders do."""
        count = images.shape[0] * images.shape[2] * images.shape[3]
        total = torch.zeros(images.shape[1], dtype=torch.float64)
        squares = torch.zeros(images.shape[1], dtype=torch.float64)
        for chunk in images.split(4096):
            pixels = chunk.to(torch.float64).div(255)
            total += pixels.sum(dim=(0, 2, 3))
            squares += pixels.square().sum(dim=(0, 2, 3))
        mean = total / count
        self.mean.copy_(mean.view(-1, 1, 1))
        std = (squares / count - mean.square()).clamp(min=0).sqrt()
        self.std.copy_(std.clamp(min=MIN_STD).view(-1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class PatchWhitening(nn.Module):
    """A frozen 2x2 convolution that whitens patches: the eigenvectors of the patch covariance, each scaled by
    1/sqrt(eigenvalue + eps), with their negatives; then a GELU. Only its bias learns (for the first epochs)."""

    def __init__(self, channels: int, kernel: int = 2):
        super().__init__()
        width = channels * kernel * kernel
        self.conv = nn.Conv2d(channels, 2 * width, kernel, bias=True)
        self.conv.weight.requires_grad = False
        nn.init.zeros_(self.conv.bias)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """images: float (N, C, H, W) as the layer will see them (normalised)."""
        _, channels, height, width = self.conv.weight.shape
        patches = F.unfold(images.float(), (height, width)).transpose(1, 2).reshape(-1, channels * height * width)
        patches = patches - patches.mean(dim=0)
        covariance = (patches.T @ patches / len(patches)).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / (eigenvalues + WHITENING_EPS).sqrt()[:, None]).flip(0)
        filters = filters.view(-1, channels, height, width).float()
        self.conv.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x):
        return F.gelu(self.conv(x))
