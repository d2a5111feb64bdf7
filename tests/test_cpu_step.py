"""A cheaper CPU training step (``--cpu_step``): the same model, the same dropout distribution,
the same state dict; a CUDA training is left alone."""

import pytest
import torch

from espnet_lowrank import cpu_step
from espnet_lowrank.cpu_step import UniformMaskDropout, channels_last_convolutions, use_uniform_masks
from espnet_lowrank.model_config import build_model
from tiny_recipe import ROOT

TINY = ROOT / "tests" / "conf" / "tiny_lowrank.yaml"
TOKENS = ["<blank>", "<unk>", "a", "b", "c", "<sos/eos>"]


def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY, token_list=TOKENS)


def test_uniform_masks_drop_p_of_the_elements_and_scale_the_rest():
    torch.manual_seed(0)
    dropout = UniformMaskDropout(0.1)
    x = torch.ones(1_000_000, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert abs((~kept).float().mean().item() - 0.1) < 4 * (0.1 * 0.9 / 1e6) ** 0.5
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.9)  # the mask and scale of the forward pass


def test_uniform_masks_follow_the_seed_and_the_mode():
    dropout = UniformMaskDropout(0.3)
    x = torch.randn(4, 100)
    torch.manual_seed(3)
    first = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(first, dropout(x))
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(UniformMaskDropout(0.0)(x), x)


def test_bf16_input_keeps_its_dtype():
    y = UniformMaskDropout(0.1)(torch.randn(64, 64, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_a_model_keeps_its_state_dict_and_its_outputs():
    model, reference = tiny_model(), tiny_model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    dropouts = sum(type(module) is torch.nn.Dropout for module in model.modules())
    assert use_uniform_masks(model) == dropouts > 0
    assert not any(type(module) is torch.nn.Dropout for module in model.modules())
    parameters = list(model.parameters())
    assert channels_last_convolutions(model) > 0
    assert [id(p) for p in model.parameters()] == [id(p) for p in parameters]  # an optimiser keeps them
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last)
               for conv in model.modules() if isinstance(conv, torch.nn.Conv2d))
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    speech, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    model.eval(), reference.eval()
    with torch.no_grad():
        ours, theirs = (m.encode(speech, lengths)[0] for m in (model, reference))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    reference.load_state_dict(state)  # a channels-last checkpoint loads into a stock model


@pytest.mark.parametrize("setting, device, expected", [
    ("fast", "cpu", ["2-D convolutions run channels-last", "dropout layers draw their masks"]),
    ("channels_last", "cpu", ["2-D convolutions run channels-last"]),
    ("stock", "cpu", []),
    ("fast", "cuda", []),  # CUDA's fused dropout is faster: left alone
])
def test_each_setting_does_what_it_says(setting, device, expected):
    model = tiny_model()
    done = cpu_step.apply(model, cpu_step.chosen(setting, device))
    assert [text.split(" ", 1)[1] for text in done] == [
        "2-D convolutions run channels-last", "dropout layers draw their masks from torch.rand"][:len(expected)]
    assert any(isinstance(m, UniformMaskDropout) for m in model.modules()) is (len(expected) == 2)
