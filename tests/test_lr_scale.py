"""lowrank_lr_scale: the factors' effective learning rate, with the same function and checkpoints."""

import pytest
import torch

from conftest import TINY_ENCODER
from espnet_lowrank.encoder import LowRankConformerEncoder
from espnet_lowrank.layers import LowRankLinear
from espnet_lowrank.lr_scale import lr_scale, set_lr_scale


def _pair(scale):
    plain = LowRankLinear(10, 14, 4)
    scaled = LowRankLinear(10, 14, 4)
    scaled.load_state_dict(plain.state_dict())
    set_lr_scale(scaled, scale)
    return plain, scaled


def test_scaling_keeps_the_function_and_the_checkpoint():
    plain, scaled = _pair(3.0)
    x = torch.randn(4, 10)
    torch.testing.assert_close(scaled(x), plain(x))
    state = scaled.state_dict()
    torch.testing.assert_close(state["U"], plain.U.detach())  # checkpoints hold the applied factors
    torch.testing.assert_close(scaled.U.detach() * 3.0, plain.U.detach())
    reloaded = LowRankLinear(10, 14, 4)
    set_lr_scale(reloaded, 3.0)
    reloaded.load_state_dict(state, strict=True)
    torch.testing.assert_close(reloaded(x), plain(x))
    unscaled = LowRankLinear(10, 14, 4)
    unscaled.load_state_dict(state, strict=True)  # a checkpoint does not depend on the scale
    torch.testing.assert_close(unscaled(x), plain(x))


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_one_adam_step_moves_the_applied_factors_scale_times_as_far(scale):
    plain, scaled = _pair(scale)
    x = torch.randn(6, 10)
    moves = []
    for layer in (plain, scaled):
        before = layer.factors()[0].detach().clone()
        optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
        layer(x).square().sum().backward()
        optimizer.step()
        moves.append((layer.factors()[0].detach() - before).abs())
    torch.testing.assert_close(moves[1], scale * moves[0], atol=1e-7, rtol=1e-4)


def test_espnet_init_and_encoder_option():
    from espnet2.torch_utils.initialize import initialize

    encoder = LowRankConformerEncoder(20, **TINY_ENCODER, lowrank_feed_forward={"mapping": "constant", "ratio": 0.5},
                                      lowrank_lr_scale=2.0)
    layer = encoder.encoders[0].feed_forward.w_1
    assert lr_scale(layer) == 2.0
    initialize(encoder, "xavier_uniform")  # re-draws, then the layers redo their spectral init
    u, v = layer.factors()
    torch.testing.assert_close(u.T @ u, v @ v.T, atol=1e-4, rtol=1e-4)  # balanced: a fresh SVD init


@pytest.mark.parametrize("value", [0, -2.0])
def test_bad_scale_is_named(value):
    with pytest.raises(ValueError, match="encoder_conf.lowrank_lr_scale"):
        LowRankConformerEncoder(20, **TINY_ENCODER, lowrank_attention={"mapping": "constant", "ratio": 0.5},
                                lowrank_lr_scale=value)
