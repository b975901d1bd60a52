"""Version 14's optimizers: torch.optim.Muon over the convolution filters seen as matrices that share their memory,
SGD over everything else, both in the checkpoint (format 3)."""
import torch
from torch import nn

from configs import VERSIONS
from models import build_model, count_parameters, fit_input_layers
from runner.optimizers import FilterMuon, filters_of, make_optimizers
from runner.state import FORMAT, TrainingState
from train import on_device


def test_filter_muon_steps_a_channels_last_filter_bank_as_muon_steps_its_matrix():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, bias=False).to(memory_format=torch.channels_last)
    reference = nn.Parameter(conv.weight.detach().permute(0, 2, 3, 1).reshape(4, -1).clone())
    ours = FilterMuon([conv.weight], lr=0.1, momentum=0.6, nesterov=True, weight_decay=0.1)
    theirs = torch.optim.Muon([reference], lr=0.1, momentum=0.6, nesterov=True, weight_decay=0.1)
    for _ in range(3):
        gradient = torch.randn(4, 6, 3, 3)
        conv.weight.grad = gradient.contiguous(memory_format=torch.channels_last)
        reference.grad = gradient.permute(0, 2, 3, 1).reshape(4, -1)
        ours.step()
        theirs.step()
        ours.zero_grad()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(conv.weight.detach().permute(0, 2, 3, 1).reshape(4, -1), reference.detach(), atol=1e-6)
    assert conv.weight.grad is None


def test_version_14_gives_muon_the_trainable_filters_and_sgd_the_rest():
    row = VERSIONS[14]
    model = build_model(row.recipe, 3, 10)
    fit_input_layers(model, torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.Generator())
    model = on_device(model, torch.device("cpu"))
    assert count_parameters(model) == row.params == VERSIONS[13].params
    sgd, muon = make_optimizers(row.recipe, model)
    filters = {id(p) for p in filters_of(model)}
    assert {id(p) for p in muon.filters} == filters and all(p.dim() == 4 for p in muon.filters)
    in_sgd = {id(p) for group in sgd.param_groups for p in group["params"]}
    assert not in_sgd & filters and in_sgd | filters == {id(p) for p in model.parameters() if p.requires_grad}
    assert (muon.defaults["lr"], muon.defaults["momentum"], muon.defaults["weight_decay"]) == (0.24, 0.6, 0.1)
    state = TrainingState(14, row.recipe, model, torch.device("cpu"), 0, 10)
    state.begin_step()
    assert [group["lr"] for group in state.param_groups] == [1.5 * 64 * 0.2, 1.5 * 0.2, 0.24 * 0.2]
    saved = state.state_dict()
    assert saved["format"] == FORMAT == 3 and len(saved["optimizers"]) == 2
