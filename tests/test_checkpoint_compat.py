"""Checkpoints saved before the training aids left the layer class (tests/fixtures/make_aids_fixture.py,
run at commit 3ba4d41 with each supported ESPnet, whose subsampling names its keys differently) still
load strictly and compute the same function: the state-dict format of the learning-rate scale (applied
factors), the Frobenius decay (none) and the guide (``<layer>.guide`` and the schedule's step) did not
change."""

from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from espnet_lowrank.decoder import LowRankTransformerDecoder
from espnet_lowrank.encoder import LowRankConformerEncoder
from espnet_lowrank.guide import guide_alpha, layer_guide
from espnet_lowrank.layers import LowRankLinear
from espnet_lowrank.lr_scale import lr_scale

FIXTURE = torch.load(Path(__file__).parent / "fixtures" / f"aids_before_split_espnet{version('espnet')}.pth")


def _built(extra):
    encoder = LowRankConformerEncoder(20, **FIXTURE["encoder_kwargs"], **extra)
    decoder = LowRankTransformerDecoder(12, 16, **FIXTURE["decoder_kwargs"], **extra)
    return encoder, decoder


@pytest.mark.parametrize("variant", sorted(FIXTURE["variants"]))
def test_a_checkpoint_saved_before_the_split_loads_strictly_and_computes_the_same(variant):
    saved = FIXTURE["variants"][variant]
    encoder, decoder = _built(saved["extra"])
    encoder.load_state_dict(saved["encoder"], strict=True)
    decoder.load_state_dict(saved["decoder"], strict=True)
    encoder.eval()
    decoder.eval()
    with torch.no_grad():
        out, out_lengths, _ = encoder(FIXTURE["feats"], FIXTURE["lengths"])
        logits = decoder(out, out_lengths, FIXTURE["tokens"], FIXTURE["token_lengths"])[0]
    torch.testing.assert_close(out, saved["encoder_out"])
    torch.testing.assert_close(logits, saved["decoder_out"])
    # and saved again, the checkpoint is the one that was loaded, key for key and value for value
    for part, model in (("encoder", encoder), ("decoder", decoder)):
        again = model.state_dict()
        assert list(again) == list(saved[part])
        for key, value in saved[part].items():
            torch.testing.assert_close(again[key], value, msg=key)


def test_the_fixture_exercises_every_aid():
    scaled = FIXTURE["variants"]["lr_scale_frobenius"]
    encoder, _ = _built(scaled["extra"])
    layers = [m for m in encoder.modules() if isinstance(m, LowRankLinear)]
    assert layers and all(lr_scale(layer) == 2.0 for layer in layers)
    guided = FIXTURE["variants"]["guide_mid_schedule"]
    assert int(guided["encoder"]["lowrank_guide.step"]) == 3
    assert any(key.endswith(".guide") for key in guided["encoder"])
    encoder, _ = _built(guided["extra"])
    encoder.load_state_dict(guided["encoder"], strict=True)
    layer = next(m for m in encoder.modules() if isinstance(m, LowRankLinear))
    assert layer_guide(layer).alpha == pytest.approx(guide_alpha(3, 10, "cosine"))
