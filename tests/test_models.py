import pytest
import torch
import torch.nn.functional as F

from configs import VERSIONS
from models import MODELS, build_model, count_parameters

EXPECTED_PARAMS = {1: 79_510, 2: 79_510, 3: 9_402, 4: 963_338, 5: 963_338, 6: 33_466, 7: 33_706, 8: 655_882,
                   9: 655_882, 10: 655_882, 11: 655_882, 12: 1_960_384, 13: 1_972_792}


def input_shape(version: int) -> tuple:
    return (3, 32, 32) if VERSIONS[version].dataset == "cifar10" else (1, 28, 28)


def model_of(version: int):
    return build_model(VERSIONS[version].recipe, input_shape(version)[0], 10)


def test_the_table_has_complete_rows_numbered_from_one():
    assert sorted(VERSIONS) == list(range(1, len(VERSIONS) + 1)) and len(VERSIONS) >= 13
    for number, row in VERSIONS.items():
        assert row.number == number
        assert row.dataset in ("mnist", "fashion_mnist", "cifar10")
        assert row.recipe.model in MODELS
        assert row.recipe.optimizer in ("sgd", "adam", "muon")
        assert row.remark
        if number <= 9:
            assert row.recipe.lr == (0.01 if row.recipe.optimizer == "sgd" else 1e-3)
            assert (row.recipe.epochs, row.recipe.batch_size) == (25, 64)
            assert row.reference_source == "seed"
        else:
            assert row.reference_source == "ours"
        if row.reference is not None:  # None: not measured yet
            assert 0 < row.reference[1] <= row.reference[0] < 1


def test_the_seed_recipe_is_the_default_for_versions_1_to_9():
    for number in range(1, 10):
        recipe = VERSIONS[number].recipe
        assert (recipe.momentum, recipe.weight_decay, recipe.label_smoothing, recipe.normalize, recipe.scheduled,
                recipe.crop_padding, recipe.flip, recipe.lookahead_from, recipe.tta) == \
            (0.0, 0.0, 0.0, False, False, 0, "none", 0, "none")


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_each_model_has_its_exact_parameter_count(version):
    assert count_parameters(model_of(version)) == VERSIONS[version].params


def test_the_table_keeps_the_published_parameter_counts():
    assert {number: VERSIONS[number].params for number in EXPECTED_PARAMS} == EXPECTED_PARAMS


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_each_model_outputs_log_probabilities_for_ten_classes(version):
    model = model_of(version).eval()
    output = model(torch.rand(5, *input_shape(version)))
    assert output.shape == (5, 10)
    assert torch.allclose(output.exp().sum(dim=1), torch.ones(5), atol=1e-5)


def test_convnet4_layer_order_follows_the_spec():
    layers = [type(layer).__name__ for layer in model_of(9).net]
    assert layers[:4] == ["Conv2d", "MaxPool2d", "ReLU", "BatchNorm2d"]
    assert layers[16:] == ["Flatten", "Dropout", "Linear", "ReLU", "Linear", "LogSoftmax"]


@pytest.mark.parametrize("version", [1, 3, 5, 9])
def test_one_optimisation_step_lowers_the_loss(version):
    torch.manual_seed(0)
    row = VERSIONS[version]
    model = model_of(version).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05) if row.recipe.optimizer == "sgd" else \
        torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.rand(16, *input_shape(version)), torch.randint(0, 10, (16,))
    before = F.nll_loss(model(images), labels)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    assert F.nll_loss(model(images), labels) < before
