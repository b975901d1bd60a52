"""Model families of the ladder, looked up by the name a version row gives."""
from torch import nn

from models.convnet4 import ConvNet4
from models.mlp import MLP
from models.small_convnet import SmallConvNet
from models.wide_convnet import WideConvNet

MODELS = {cls.__name__: cls for cls in (MLP, SmallConvNet, WideConvNet, ConvNet4)}


def build_model(name: str, model_args: dict) -> nn.Module:
    return MODELS[name](**model_args)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
