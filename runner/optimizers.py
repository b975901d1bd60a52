"""A recipe's optimizers: SGD or Adam over every trainable parameter, or, for `muon`, PyTorch's Muon over the
convolution filters and SGD over the rest (BatchNorm biases, the whitening bias, the linear head).

Every parameter group carries `peak_lr`, the rate the schedule scales step by step."""
import torch
from torch import nn

from runner.settings import Recipe


def filters_of(model: nn.Module) -> list:
    """The trainable convolution filters (4-D weights): what Muon takes when the recipe's optimizer is muon."""
    return [module.weight for module in model.modules()
            if isinstance(module, nn.Conv2d) and module.weight.requires_grad]


def parameter_groups(recipe: Recipe, model: nn.Module) -> list:
    """The groups of the SGD or Adam optimizer: every trainable parameter (but the filters under Muon), in one
    group, or, when BatchNorm biases learn faster, those biases in a group of their own whose weight decay is
    divided by the same factor, so both decay the same amount per step."""
    to_muon = {id(p) for p in filters_of(model)} if recipe.optimizer == "muon" else set()
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in to_muon]
    scale = recipe.norm_bias_lr_scale
    if scale == 1:
        return [dict(params=trainable, peak_lr=recipe.lr, weight_decay=recipe.weight_decay)]
    biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.bias is not None and m.bias.requires_grad}
    return [dict(params=[p for p in trainable if id(p) in biases], peak_lr=recipe.lr * scale,
                 weight_decay=recipe.weight_decay / scale),
            dict(params=[p for p in trainable if id(p) not in biases], peak_lr=recipe.lr,
                 weight_decay=recipe.weight_decay)]


def memory_order(weight: torch.Tensor) -> tuple:
    """The order of a filter bank's dimensions in memory: (out, in, kh, kw) contiguous, (out, kh, kw, in) in
    channels_last."""
    for order in ((0, 1, 2, 3), (0, 2, 3, 1)):
        if weight.permute(order).is_contiguous():
            return order
    raise ValueError(f"a filter bank of shape {tuple(weight.shape)} is in neither contiguous nor channels_last memory")


def as_matrix(tensor: torch.Tensor, order: tuple) -> torch.Tensor:
    """(out, in, kh, kw) as a matrix (out, the rest in `order`): a view where `order` is the memory's."""
    return tensor.permute(order).reshape(len(tensor), -1)


class FilterMuon(torch.optim.Muon):
    """torch.optim.Muon, which takes 2-D parameters only, over convolution filters seen as matrices that share
    their memory, columns in the memory's order (orthogonalising a matrix does not depend on the order of its
    columns). Each step hands the filters' gradients to the matrices, and Muon's in-place steps change the filters."""

    def __init__(self, filters: list, **settings):
        self.filters, self.orders = filters, [memory_order(weight) for weight in filters]
        super().__init__([as_matrix(weight.detach(), order) for weight, order in zip(filters, self.orders)],
                         **settings)

    @torch.no_grad()
    def step(self, closure=None):
        matrices = self.param_groups[0]["params"]
        for weight, order, matrix in zip(self.filters, self.orders, matrices):
            matrix.grad = None if weight.grad is None else as_matrix(weight.grad, order)
        loss = super().step(closure)
        for matrix in matrices:
            matrix.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for weight in self.filters:
            weight.grad = None


def make_optimizers(recipe: Recipe, model: nn.Module) -> list:
    """The recipe's optimizers, the one holding the main parameter group first."""
    groups = [dict(group, lr=group["peak_lr"]) for group in parameter_groups(recipe, model)]
    if recipe.optimizer == "adam":
        return [torch.optim.Adam(groups)]
    sgd = torch.optim.SGD(groups, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if recipe.optimizer != "muon":
        return [sgd]
    muon = FilterMuon(filters_of(model), lr=recipe.muon_lr, momentum=recipe.muon_momentum, nesterov=True,
                      weight_decay=recipe.muon_weight_decay)
    muon.param_groups[0]["peak_lr"] = recipe.muon_lr
    return [sgd, muon]

