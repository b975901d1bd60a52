"""Model families of the ladder, looked up by the name a recipe gives, and the input layers a recipe adds."""
import inspect

import torch
from torch import nn

from models.airbench import AirbenchNet
from models.convnet4 import ConvNet4
from models.inputs import WHITENING_IMAGES, Normalize, PatchWhitening
from models.mlp import MLP
from models.small_convnet import SmallConvNet
from models.wide_convnet import WideConvNet
from runner.settings import MODEL_KINDS, REGISTERED

MODELS = {cls.__name__: cls for cls in (MLP, SmallConvNet, WideConvNet, ConvNet4, AirbenchNet)}


def build_model(recipe, channels: int, classes: int) -> nn.Module:
    """The recipe's model (a built-in one, or one a ladder file registered) for images of `channels` channels and
    `classes` classes, behind the input layers the recipe asks for. Without input layers it is the bare model, so its
    state keeps the names older checkpoints have."""
    layers, model_args = [], dict(recipe.model_args)
    cls = MODELS.get(recipe.model) or REGISTERED["model"][recipe.model]
    takes = inspect.signature(cls).parameters
    if "classes" in takes:
        model_args["classes"] = classes
    if recipe.normalize:
        layers.append(Normalize(channels))
    if MODEL_KINDS[recipe.model].takes is None and "in_channels" in takes:  # any number of channels: those given
        model_args["in_channels"] = channels
    if recipe.whitening:
        whitening = PatchWhitening(channels)
        layers.append(whitening)
        model_args["in_channels"] = whitening.conv.out_channels
    try:
        model = cls(**model_args)
    except TypeError as error:
        raise ValueError(f"model {recipe.model} cannot take {model_args} ({error})") from None
    return nn.Sequential(*layers, model) if layers else model


def input_layers(model: nn.Module) -> list:
    return [module for module in model.modules() if isinstance(module, (Normalize, PatchWhitening))]


@torch.no_grad()
def fit_input_layers(model: nn.Module, train_images: torch.Tensor, generator: torch.Generator) -> None:
    """Fit the input layers, in order, to the training split (uint8 (N, C, H, W)); whitening sees WHITENING_IMAGES
    images drawn at random (an image folder lists its images class by class), as the layers before it make them."""
    sample = torch.randperm(len(train_images), generator=generator)[:WHITENING_IMAGES]
    seen = train_images[sample].float().div(255)
    for layer in input_layers(model):
        if isinstance(layer, Normalize):
            layer.fit(train_images)
            seen = layer(seen)
        else:
            layer.fit(seen)


def whitening_layer(model: nn.Module) -> PatchWhitening | None:
    return next((module for module in model.modules() if isinstance(module, PatchWhitening)), None)


def count_parameters(model: nn.Module) -> int:
    """Every parameter, frozen ones included, as the version table counts them."""
    return sum(p.numel() for p in model.parameters())
