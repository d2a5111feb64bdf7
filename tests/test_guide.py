"""Guided training: the schedule, the mixed output, resume, and guide-free checkpoints."""

import copy
import math
import re

import pytest
import torch

from conftest import TINY_ENCODER
from espnet_lowrank.decoder import LowRankTransformerDecoder
from espnet_lowrank.encoder import LowRankConformerEncoder
from espnet_lowrank.guide import add_guide, guide_alpha, layer_guide
from espnet_lowrank.layers import FactorPair, LowRankConv2d, LowRankLinear, LowRankPointwiseConv1d

GROUPS = dict(
    lowrank_attention={"mapping": "constant", "ratio": 0.5},
    lowrank_feed_forward={"mapping": "constant", "ratio": 0.25},
    lowrank_convolution={"mapping": "constant", "ratio": 0.5},
)


def _encoder(guide=None, **extra):
    return LowRankConformerEncoder(20, **TINY_ENCODER, **GROUPS, lowrank_guide=guide, **extra)


def _features():
    return torch.randn(2, 40, 20), torch.tensor([40, 33])


def _train_forwards(encoder, count):
    encoder.train()
    for _ in range(count):
        encoder(*_features())[0].sum().backward()


@pytest.mark.parametrize("schedule,expected", [
    ("cosine", [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0, 0.0]),
    ("linear", [1.0, 0.75, 0.5, 0.0, 0.0]),
    ("switch", [1.0, 1.0, 1.0, 0.0, 0.0]),
])
def test_alpha_falls_from_one_to_zero(schedule, expected):
    assert [guide_alpha(step, 8, schedule) for step in (0, 2, 4, 8, 100)] == pytest.approx(expected)


@pytest.mark.parametrize("make,shape", [
    (lambda: LowRankLinear(12, 10, 4), (3, 5, 12)),
    (lambda: LowRankPointwiseConv1d(12, 10, 4), (3, 12, 5)),
    (lambda: LowRankConv2d(3, 6, 4, 3, stride=2), (2, 3, 9, 9)),
])
def test_guided_output_mixes_the_dense_and_the_factored_path(make, shape):
    layer = make()
    x = torch.randn(*shape)
    plain = layer(x)
    add_guide(layer)
    torch.testing.assert_close(layer(x), plain, atol=1e-5, rtol=1e-5)  # the guide starts at U·V
    with torch.no_grad():
        layer.guide.add_(0.1 * torch.randn_like(layer.guide))
    layer_guide(layer).alpha = 0.3
    dense = layer.to_dense()  # applies α·W + (1−α)·U·V
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)
    layer(x).square().sum().backward()
    assert layer.guide.grad.abs().sum() > 0 and layer.U.grad.abs().sum() > 0


def test_schedule_counts_training_batches_and_drops_the_guides_at_zero():
    encoder = _encoder({"steps": 4, "schedule": "linear"})
    layers = [m for m in encoder.modules() if isinstance(m, FactorPair)]
    plain_params = sum(p.numel() for p in _encoder().parameters())
    assert sum(p.numel() for p in encoder.parameters()) > plain_params
    _train_forwards(encoder, 2)
    assert int(encoder.lowrank_guide.step) == 2 and all(layer_guide(m).alpha == 0.75 for m in layers)
    encoder.eval()
    with torch.no_grad():
        encoder(*_features())  # validation does not count
    assert int(encoder.lowrank_guide.step) == 2
    _train_forwards(encoder, 2)
    encoder(*_features())  # the next batch finds α = 0
    assert all(layer_guide(m) is None and not hasattr(m, "guide") for m in layers)
    assert not any(".guide" in key for key in encoder.state_dict())
    assert sum(p.numel() for p in encoder.parameters()) == plain_params


def test_switch_trains_the_guides_alone_then_restarts_the_factors_from_them():
    encoder = _encoder({"steps": 2, "schedule": "switch"})
    q = encoder.encoders[0].self_attn.linear_q
    _train_forwards(encoder, 2)
    assert q.U.grad is None and q.guide.grad is not None  # the factors wait: no optimiser state yet
    with torch.no_grad():
        q.guide.add_(0.1 * torch.randn_like(q.guide))  # as training would move it: full rank
    trained = q.guide.detach().clone()
    encoder.train()
    encoder(*_features())  # the third batch switches
    assert layer_guide(q) is None
    left, singular, right = torch.linalg.svd(trained.double())
    best = left[:, :q.rank] @ torch.diag(singular[:q.rank]) @ right[:q.rank]
    torch.testing.assert_close((q.U @ q.V).detach().double(), best, atol=1e-5, rtol=1e-5)


def test_at_alpha_zero_the_dense_path_is_not_computed(monkeypatch):
    encoder = _encoder({"steps": 1})
    _train_forwards(encoder, 1)

    def refuse(*args):
        raise AssertionError("the dense path ran after the schedule ended")

    for cls in (LowRankLinear, LowRankPointwiseConv1d):
        monkeypatch.setattr(cls, "apply_matrix", refuse)
    _train_forwards(encoder, 2)


def test_resume_continues_the_schedule_and_the_guides():
    encoder = _encoder({"steps": 10})
    _train_forwards(encoder, 3)
    resumed = _encoder({"steps": 10})
    resumed.load_state_dict(copy.deepcopy(encoder.state_dict()), strict=True)
    assert int(resumed.lowrank_guide.step) == 3
    q, q_resumed = encoder.encoders[0].self_attn.linear_q, resumed.encoders[0].self_attn.linear_q
    assert layer_guide(q_resumed).alpha == pytest.approx(guide_alpha(3, 10, "cosine"))  # the next batch's
    torch.testing.assert_close(q_resumed.guide, q.guide)
    encoder.eval(), resumed.eval()
    x = _features()
    torch.testing.assert_close(resumed(*x)[0], encoder(*x)[0])
    assert layer_guide(q).alpha == layer_guide(q_resumed).alpha


def test_a_finished_checkpoint_loads_guide_free_into_the_training_config():
    encoder = _encoder({"steps": 2})
    _train_forwards(encoder, 3)
    state = encoder.state_dict()
    fresh = _encoder({"steps": 2})  # as Speech2Text builds it from the training config.yaml
    fresh.load_state_dict(state, strict=True)
    assert not any(layer_guide(m) for m in fresh.modules() if isinstance(m, FactorPair))
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in _encoder().parameters())
    # ESPnet averages checkpoints by summing integer buffers: still finished
    averaged = {k: v + v if not v.is_floating_point() else v for k, v in state.items()}
    _encoder({"steps": 2}).load_state_dict(averaged, strict=True)


def test_checkpoints_that_do_not_fit_the_guide_setting_are_refused():
    guided = _encoder({"steps": 10})
    _train_forwards(guided, 1)
    with pytest.raises(RuntimeError, match=r"unexpected keys \[.*guide"):
        _encoder().load_state_dict(guided.state_dict(), strict=False)
    with pytest.raises(RuntimeError, match=r"missing keys \[.*self_attn.linear_q.guide"):
        _encoder({"steps": 10}).load_state_dict(_encoder().state_dict(), strict=False)


def test_espnet_init_restarts_the_guide_at_the_new_factors():
    from espnet2.torch_utils.initialize import initialize

    encoder = _encoder({"steps": 5})
    initialize(encoder, "xavier_uniform")
    for layer in (m for m in encoder.modules() if isinstance(m, FactorPair)):
        torch.testing.assert_close(layer.guide, layer.U @ layer.V)


def test_decoder_guides_its_layers_too():
    decoder = LowRankTransformerDecoder(
        12, 32, attention_heads=2, linear_units=64, num_blocks=1,
        lowrank_self_attention={"mapping": "constant", "ratio": 0.5}, lowrank_guide={"steps": 1},
    )
    decoder.train()
    memory, lengths = torch.randn(2, 7, 32), torch.tensor([7, 5])
    tokens = torch.randint(1, 11, (2, 4))
    decoder(memory, lengths, tokens, torch.tensor([4, 3]))[0].sum().backward()
    assert int(decoder.lowrank_guide.step) == 1
    decoder(memory, lengths, tokens, torch.tensor([4, 3]))
    assert not any(".guide" in key for key in decoder.state_dict())


@pytest.mark.parametrize("guide,message", [
    ({"steps": 0}, "lowrank_guide.steps=0"),
    ({"steps": 5, "schedule": "step"}, "lowrank_guide.schedule='step' is unknown; choose one of cosine, linear, switch"),
    ({"steps": 5, "ratio": 0.1}, "lowrank_guide.ratio is not an option"),
])
def test_bad_guide_settings_are_named(guide, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _encoder(guide)


def test_a_guide_needs_low_rank_layers():
    with pytest.raises(ValueError, match="encoder_conf.lowrank_guide is set but no layer group is low rank"):
        LowRankConformerEncoder(20, **TINY_ENCODER, lowrank_guide={"steps": 3})
