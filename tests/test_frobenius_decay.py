"""Frobenius decay: the gradients of (λ/2)·‖UV‖²_F, and how it meets ESPnet's weight decay."""

import pytest
import torch

from conftest import TINY_ENCODER
from espnet_lowrank.encoder import LowRankConformerEncoder
from espnet_lowrank.frobenius import FrobeniusDecay, add_frobenius_decay
from espnet_lowrank.layers import LowRankLinear


def test_gradients_equal_autograd_of_the_penalty():
    layer = LowRankLinear(12, 9, 4).double()
    add_frobenius_decay(layer, 0.3)
    x = torch.randn(5, 12, dtype=torch.float64)
    layer(x).sin().sum().backward()
    decayed = (layer.U.grad.clone(), layer.V.grad.clone())

    reference = LowRankLinear(12, 9, 4).double()
    reference.load_state_dict(layer.state_dict())
    loss = reference(x).sin().sum() + 0.3 / 2 * (reference.U @ reference.V).square().sum()
    loss.backward()
    torch.testing.assert_close(decayed[0], reference.U.grad)
    torch.testing.assert_close(decayed[1], reference.V.grad)


def test_no_decay_outside_training():
    layer = LowRankLinear(6, 6, 2)
    add_frobenius_decay(layer, 1.0)
    layer.eval()
    x = torch.randn(3, 6)
    layer(x).sum().backward()
    plain = LowRankLinear(6, 6, 2)
    plain.load_state_dict(layer.state_dict())
    plain(x).sum().backward()
    torch.testing.assert_close(layer.U.grad, plain.U.grad)


def test_factors_leave_espnet_weight_decay_to_the_frobenius_decay():
    from espnet2.optimizers.optim_groups import configure_optimizer

    encoder = LowRankConformerEncoder(
        20, **TINY_ENCODER, lowrank_attention={"mapping": "constant", "ratio": 0.5},
        lowrank_frobenius_decay=1e-4,
    )
    q = encoder.encoders[0].self_attn.linear_q
    assert [t.decay for t in q.factor_transforms() if isinstance(t, FrobeniusDecay)] == [1e-4]
    # ESPnet's exclude_weight_decay: true puts parameters marked _no_weight_decay in a group without it
    optimizer = configure_optimizer(encoder, torch.optim.Adam, {"lr": 1e-3, "weight_decay": 1e-2}, {})
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay_of[id(q.U)] == decay_of[id(q.V)] == 0.0
    assert decay_of[id(encoder.encoders[0].self_attn.linear_pos.weight)] == 1e-2


@pytest.mark.parametrize("value", [-1.0, "1e-4", True])
def test_bad_decay_is_named(value):
    with pytest.raises(Exception, match="lowrank_frobenius_decay"):  # ours or typeguard's
        LowRankConformerEncoder(20, **TINY_ENCODER, lowrank_attention={"mapping": "constant", "ratio": 0.5},
                                lowrank_frobenius_decay=value)
