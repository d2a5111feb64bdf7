"""The memory-lean factor pair: same outputs and gradients as autograd's, and
only the input kept for the backward pass."""

from pathlib import Path

import pytest
import torch

from espnet_lowrank.layers import FactorPair, LowRankLinear, LowRankPointwiseConv1d
from espnet_lowrank.model_config import build_model
from espnet_lowrank.recompute import RecomputedPair
from espnet_lowrank.surgery import set_recompute
from espnet_lowrank.tools.bench import saved_activation_bytes

CONF = Path(__file__).resolve().parent / "conf"


def test_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    u = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RecomputedPair.apply, (x, u, v, bias))
    assert torch.autograd.gradcheck(RecomputedPair.apply, (x, u, v, None))


@pytest.mark.parametrize("cls,shape", [(LowRankLinear, (3, 11, 12)), (LowRankPointwiseConv1d, (3, 12, 11))])
def test_layer_outputs_and_gradients_equal_autograds(cls, shape):
    torch.manual_seed(0)
    layer = cls(12, 10, rank=4).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    results = []
    for on in (False, True):
        layer.recompute_hidden = on
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)).sum().backward()
        results.append([y.detach(), x.grad.clone(), layer.U.grad.clone(), layer.V.grad.clone(), layer.bias.grad.clone()])
    for plain, lean in zip(*results):
        torch.testing.assert_close(lean, plain)


def test_bf16_autocast_gradients_match_autograds_within_tolerance():
    torch.manual_seed(0)
    layer = LowRankLinear(64, 48, rank=16)
    x = torch.randn(4, 20, 64)
    grads = []
    for on in (False, True):
        layer.recompute_hidden = on
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16
        y.float().pow(2).sum().backward()
        assert layer.U.grad.dtype == torch.float32
        grads.append((layer.U.grad.clone(), layer.V.grad.clone()))
    for plain, lean in zip(*grads):
        torch.testing.assert_close(lean, plain, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("cls,shape", [(LowRankLinear, (3, 11, 12)), (LowRankPointwiseConv1d, (3, 12, 11))])
def test_saved_bytes_are_the_input_alone(cls, shape):
    """Autograd keeps x (N·in floats) and h = V x (N·r floats); the lean
    pair keeps x alone, as a dense layer does."""
    layer = cls(12, 10, rank=4)
    x = torch.randn(*shape, requires_grad=True)
    positions, in_features, rank = 33, 12, 4

    def saved(module):
        return saved_activation_bytes(module, lambda: module(x).sum().backward())

    plain = saved(layer)
    layer.recompute_hidden = True
    lean = saved(layer)
    dense = saved(layer.to_dense())
    assert plain == 4 * positions * (in_features + rank)
    assert lean == dense == 4 * positions * in_features


def test_a_model_saves_less_and_trains_the_same():
    torch.manual_seed(0)
    model = build_model(CONF / "tiny_lowrank.yaml", vocab_size=20)
    batch = {"speech": torch.randn(2, 8000), "speech_lengths": torch.tensor([8000, 6000]),
             "text": torch.randint(1, 19, (2, 5)), "text_lengths": torch.tensor([5, 4])}
    model.eval()  # no dropout: the two passes must see the same function

    def step():
        model(**batch)[0].backward()

    plain = saved_activation_bytes(model, step)
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert set_recompute(model, True) == sum(isinstance(m, FactorPair) for m in model.modules()) - 1
    lean = saved_activation_bytes(model, step)
    assert lean < plain
    for before, parameter in zip(plain_grads, model.parameters()):
        torch.testing.assert_close(parameter.grad, before, rtol=1e-4, atol=1e-6)
