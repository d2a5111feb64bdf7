"""Timing layers for the ``no_slower`` budget: the input shapes recorded in a real forward pass, the
search for the first rank slower than dense, and one timed step."""

from pathlib import Path

import pytest
import torch
from torch import nn

from espnet_lowrank import budget, layer_speed
from espnet_lowrank.model_config import build_model
from espnet_lowrank.recipe_batch import synthetic_batch

CONF = Path(__file__).resolve().parent / "conf"
TOKENS = ["<blank>", "<unk>", *"abcdefghijklmnop", "<sos/eos>"]


@pytest.fixture
def dense_model():
    torch.manual_seed(0)
    return build_model(CONF / "tiny_dense.yaml", token_list=TOKENS).eval()


def test_the_inputs_recorded_are_what_each_layer_sees_and_the_forward_pass_is_unchanged(dense_model):
    batch = synthetic_batch(0, 0.0, 0, len(TOKENS), "cpu", [16000, 12000, 9000], [7, 5, 4])
    modules = ["encoder.encoders.1.feed_forward.w_1", "encoder.encoders.0.conv_module.pointwise_conv1",
               "decoder.decoders.0.src_attn.linear_q"]
    with torch.no_grad():
        loss = dense_model(**batch)[0]
    shapes = layer_speed.layer_inputs(dense_model, batch, modules)
    frames = shapes[modules[0]][1]
    assert shapes[modules[0]] == (3, frames, 32)  # batch × subsampled frames × channels, channels last
    assert 16000 // 128 // 5 <= frames <= 16000 // 128 // 4  # conv2d: a quarter of the feature frames
    assert shapes[modules[1]] == (3, 32, frames)  # the pointwise convolution sees channels first
    assert shapes[modules[2]] == (3, 8, 32)  # the decoder: the longest text and <sos>
    with torch.no_grad():
        assert torch.equal(dense_model(**batch)[0], loss)  # the hooks changed nothing and are gone
    assert not any(module._forward_pre_hooks for module in dense_model.modules())


def test_a_layer_no_input_reaches_is_named(dense_model):
    batch = synthetic_batch(0, 0.0, 0, len(TOKENS), "cpu", [16000], [5])
    dense_model.encoder.spare = nn.Linear(32, 32)  # in the model, on no path of its forward pass
    with pytest.raises(ValueError, match="no input reached encoder.spare in a forward pass"):
        layer_speed.layer_inputs(dense_model, batch, ["encoder.encoders.0.feed_forward.w_1", "encoder.spare"])


def _feed_forward_units(model):
    matrices = {block: [model.encoder.encoders[block].feed_forward.w_1.weight,
                        model.encoder.encoders[block].feed_forward.w_2.weight] for block in (0, 1)}
    return [budget.unit_from_weights("encoder", "feed_forward", block, weights,
                                     [f"encoder.encoders.{block}.feed_forward.w_1",
                                      f"encoder.encoders.{block}.feed_forward.w_2"])
            for block, weights in matrices.items()]


def test_every_rank_is_timed_once_per_shape_and_those_slower_than_dense_are_found(dense_model, monkeypatch):
    """A fake clock: each matrix product costs a launch plus its multiply-adds, so U·V pays two launches
    where dense pays one; rank 2 is also slow, as a thin product can be (docs/results.md)."""
    timed = []

    def seconds(layer, shape, probe):
        tokens = shape[0] * shape[1]
        if isinstance(layer, nn.Linear):
            return 5000 + tokens * layer.in_features * layer.out_features
        timed.append(layer.rank)
        thin = 10 ** 6 if layer.rank == 2 else 0
        return 10000 + thin + tokens * layer.rank * (layer.in_features + layer.out_features)

    monkeypatch.setattr(layer_speed, "step_seconds", seconds)
    units = _feed_forward_units(dense_model)
    shapes = {module: torch.Size([2, 10, 32 if module.endswith("w_1") else 64])
              for unit in units for module in unit.modules}
    found = layer_speed.slower_ranks(dense_model, units, shapes, 2, layer_speed.Probe())
    # 20 tokens: dense 5000 + 20·2048 a layer, rank r 10000 + 20·96·r: slower from r = 18.7 (the parameters
    # break even at 21.3), so at 20; and at 2
    assert found == {units[0].name: {2, 20}, units[1].name: {2, 20}}
    assert timed == [r for r in range(2, 22, 2) for _ in range(2)]  # w_1 and w_2, each rank once for both blocks
    options = [rank for rank, _, _ in budget.choices(units[0], 2, found[units[0].name])]
    assert options == [*range(4, 20, 2), 32]  # dense stays a choice
    roomy = {module: torch.Size([2, 10 ** 6, shape[-1]]) for module, shape in shapes.items()}
    assert layer_speed.slower_ranks(dense_model, units, roomy, 2, layer_speed.Probe()) == {
        unit.name: set() for unit in units}  # many tokens: no rank below break-even is slower


def test_one_timed_step_runs_forward_and_backward_and_leaves_no_gradients():
    layer = nn.Linear(16, 8)
    calls = []
    layer.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append("backward"))
    seconds = layer_speed.step_seconds(layer, torch.Size([4, 16]), layer_speed.Probe(repeats=3, warmup=1))
    assert seconds > 0 and len(calls) == 4  # one untimed, three timed
    assert all(parameter.grad is None for parameter in layer.parameters())
