"""The built-in batch transforms, written with the ladder API as a ladder file writes its own: mixup, cutmix and
cutout. Each draws only from the run's generator, so a resumed run draws what the uninterrupted one would have.
torch is imported inside each, so that registering them (which every command does) imports no torch."""
import math

from ladder import batch_transform


def one_hot(labels, classes: int):
    import torch.nn.functional as F

    return F.one_hot(labels, classes).float()


def mixing_weight(alpha: float, generator) -> float:
    """A draw of Beta(alpha, alpha) made from two Gamma(alpha) draws, seeded from the generator."""
    import numpy as np
    import torch

    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha={alpha:g}: give a number above 0")
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    first, second = np.random.default_rng(seed).gamma(alpha, size=2)
    return float(first / (first + second))


@batch_transform("mixup")
def mixup(images, labels, classes, generator, alpha: float = 0.2):
    """Each image blended with another of the batch, its targets blended by the same weight."""
    import torch

    weight = mixing_weight(alpha, generator)
    partner = torch.randperm(len(images), generator=generator).to(images.device)
    targets = one_hot(labels, classes)
    return images.lerp(images[partner], 1 - weight), targets.lerp(targets[partner], 1 - weight)


@batch_transform("cutmix")
def cutmix(images, labels, classes, generator, alpha: float = 1.0):
    """A box of each image replaced by the same box of another, its targets mixed by the areas."""
    import torch

    height, width = images.shape[-2:]
    weight = mixing_weight(alpha, generator)
    box_height, box_width = round(height * math.sqrt(1 - weight)), round(width * math.sqrt(1 - weight))
    top = int(torch.randint(height - box_height + 1, (1,), generator=generator))
    left = int(torch.randint(width - box_width + 1, (1,), generator=generator))
    partner = torch.randperm(len(images), generator=generator).to(images.device)
    images = images.clone()
    images[..., top:top + box_height, left:left + box_width] = \
        images[partner, ..., top:top + box_height, left:left + box_width]
    kept = 1 - box_height * box_width / (height * width)
    targets = one_hot(labels, classes)
    return images, targets.lerp(targets[partner], 1 - kept)


@batch_transform("cutout")
def cutout(images, labels, classes, generator, size: int = 8):
    """A size x size square of each image, centred anywhere on it (so partly outside at the edges), set to 0."""
    import torch

    if size < 1:
        raise ValueError(f"size={size}: give a whole number of 1 or more")
    count, height, width = len(images), *images.shape[-2:]
    centres = torch.stack([torch.randint(height, (count,), generator=generator),
                           torch.randint(width, (count,), generator=generator)], 1).to(images.device)
    start = centres - size // 2
    rows = torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device)
    inside_rows = (rows >= start[:, :1]) & (rows < start[:, :1] + size)
    inside_columns = (columns >= start[:, 1:]) & (columns < start[:, 1:] + size)
    square = inside_rows[:, None, :, None] & inside_columns[:, None, None, :]
    return images.masked_fill(square, 0.0), labels
