"""Tests for the ``models`` package: the registry and the eight classic CIFAR-10 CNNs."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import MODELS, UnknownModelError, create_model
from models.mobilenet import DepthwiseSeparable

# Parameter counts of the classic kuangliu/pytorch-cifar definitions at 10 classes.
EXPECTED_PARAMS: dict[str, int] = {
    "vgg": 20_040_522,
    "resnet18": 11_173_962,
    "googlenet": 6_166_250,
    "densenet121": 6_956_298,
    "mobilenet": 3_217_226,
    "dpn92": 34_236_634,
    "shufflenetg2": 887_582,
    "senet18": 11_260_354,
}


def _bias_before_batchnorm(model: nn.Module) -> set[str]:
    """Names of conv biases immediately followed by a BatchNorm in a Sequential.

    In train mode BN subtracts the per-channel batch mean, so the gradient of such a bias is
    zero in exact arithmetic (VGG and GoogLeNet keep these biases for the classic counts).
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, layer), (_, following) in zip(children, children[1:]):
            if isinstance(layer, nn.Conv2d) and layer.bias is not None and isinstance(following, nn.BatchNorm2d):
                names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


def test_registry_names_match_table() -> None:
    assert set(MODELS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_param_count_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]

    model.train()
    x = torch.randn(2, 3, 32, 32)
    target = torch.tensor([1, 7])
    out = model(x)
    assert out.shape == (2, 10)
    F.cross_entropy(out, target).backward()

    exempt = _bias_before_batchnorm(model)
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name}: {pname} has no grad"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite grad"
        if pname not in exempt:
            assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero grad"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_other_num_classes(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)


def test_unknown_model() -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model("nope")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    assert "'nope'" in message
    for name in EXPECTED_PARAMS:
        assert name in message


def test_depthwise_separable_shape() -> None:
    block = DepthwiseSeparable(32, 64, 2)
    assert block(torch.randn(1, 32, 32, 32)).shape == (1, 64, 16, 16)


# channels_last is the CPU's choice for most registry models (core.speed.CHANNELS_LAST): the same
# weights must give the same outputs in either memory format.
@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_matches_contiguous(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.to(memory_format=torch.channels_last))
    assert got.shape == (2, 10)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
