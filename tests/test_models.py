import pytest
import torch
import torch.nn.functional as F

from configs import VERSIONS
from models import MODELS, build_model, count_parameters

EXPECTED_PARAMS = {1: 79_510, 2: 79_510, 3: 9_402, 4: 963_338, 5: 963_338, 6: 33_466, 7: 33_706, 8: 655_882,
                   9: 655_882}


def input_shape(version: int) -> tuple:
    return (3, 32, 32) if VERSIONS[version].dataset == "cifar10" else (1, 28, 28)


def test_the_table_has_nine_complete_rows():
    assert sorted(VERSIONS) == list(range(1, 10))
    for number, row in VERSIONS.items():
        assert row.number == number
        assert row.dataset in ("mnist", "fashion_mnist", "cifar10")
        assert row.model in MODELS
        assert row.optimizer in ("sgd", "adam")
        assert row.lr == (0.01 if row.optimizer == "sgd" else 1e-3)
        assert (row.epochs, row.batch_size) == (25, 64)
        assert 0 < row.seed_test_acc <= row.seed_train_acc < 1
        assert row.remark


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_each_model_has_its_exact_parameter_count(version):
    row = VERSIONS[version]
    assert count_parameters(build_model(row.model, row.model_args)) == row.params


def test_the_table_keeps_the_published_parameter_counts():
    assert {number: VERSIONS[number].params for number in EXPECTED_PARAMS} == EXPECTED_PARAMS


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_each_model_outputs_log_probabilities_for_ten_classes(version):
    row = VERSIONS[version]
    model = build_model(row.model, row.model_args).eval()
    output = model(torch.rand(5, *input_shape(version)))
    assert output.shape == (5, 10)
    assert torch.allclose(output.exp().sum(dim=1), torch.ones(5), atol=1e-5)


def test_convnet4_layer_order_follows_the_spec():
    layers = [type(layer).__name__ for layer in build_model("ConvNet4", VERSIONS[9].model_args).net]
    assert layers[:4] == ["Conv2d", "MaxPool2d", "ReLU", "BatchNorm2d"]
    assert layers[16:] == ["Flatten", "Dropout", "Linear", "ReLU", "Linear", "LogSoftmax"]


@pytest.mark.parametrize("version", [1, 3, 5, 9])
def test_one_optimisation_step_lowers_the_loss(version):
    torch.manual_seed(0)
    row = VERSIONS[version]
    model = build_model(row.model, row.model_args).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05) if row.optimizer == "sgd" else \
        torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.rand(16, *input_shape(version)), torch.randint(0, 10, (16,))
    before = F.nll_loss(model(images), labels)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    assert F.nll_loss(model(images), labels) < before
