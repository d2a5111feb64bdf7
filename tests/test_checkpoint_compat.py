"""Checkpoints saved before the training aids left the layer class (tests/fixtures/make_aids_fixture.py,
run here by the code of commit 3ba4d41, taken from the repository's history, with the ESPnet installed)
still load strictly and compute the same function: the state-dict format of the learning-rate scale (applied
factors), the Frobenius decay (none) and the guide (``<layer>.guide`` and the schedule's step) did not
change."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from espnet_lowrank.decoder import LowRankTransformerDecoder
from espnet_lowrank.encoder import LowRankConformerEncoder
from espnet_lowrank.guide import guide_alpha, layer_guide
from espnet_lowrank.layers import FactorPair
from espnet_lowrank.lr_scale import lr_scale

ROOT = Path(__file__).resolve().parents[1]
BEFORE_SPLIT = "3ba4d41"  # the last commit whose factor pair carried the training aids itself
VARIANTS = ["guide_mid_schedule", "lr_scale_frobenius"]  # make_aids_fixture.py's


@pytest.fixture(scope="module")
def saved_before_split(tmp_path_factory) -> dict:
    """make_aids_fixture.py's checkpoints, saved by the package as it was at BEFORE_SPLIT."""
    old = tmp_path_factory.mktemp("before_split")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_SPLIT, "espnet_lowrank"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {BEFORE_SPLIT} is not in this checkout's history (a shallow clone?)")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    out = old / "fixture.pth"
    made = subprocess.run([sys.executable, str(ROOT / "tests" / "fixtures" / "make_aids_fixture.py"), str(out)],
                          cwd=old, env=dict(os.environ, PYTHONPATH=str(old)), capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    return torch.load(out)


def _built(fixture, extra):
    encoder = LowRankConformerEncoder(20, **fixture["encoder_kwargs"], **extra)
    decoder = LowRankTransformerDecoder(12, 16, **fixture["decoder_kwargs"], **extra)
    return encoder, decoder


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_checkpoint_saved_before_the_split_loads_strictly_and_computes_the_same(saved_before_split, variant):
    fixture = saved_before_split
    saved = fixture["variants"][variant]
    encoder, decoder = _built(fixture, saved["extra"])
    encoder.load_state_dict(saved["encoder"], strict=True)
    decoder.load_state_dict(saved["decoder"], strict=True)
    encoder.eval()
    decoder.eval()
    with torch.no_grad():
        out, out_lengths, _ = encoder(fixture["feats"], fixture["lengths"])
        logits = decoder(out, out_lengths, fixture["tokens"], fixture["token_lengths"])[0]
    torch.testing.assert_close(out, saved["encoder_out"])
    torch.testing.assert_close(logits, saved["decoder_out"])
    # and saved again, the checkpoint is the one that was loaded, key for key and value for value
    for part, model in (("encoder", encoder), ("decoder", decoder)):
        again = model.state_dict()
        assert list(again) == list(saved[part])
        for key, value in saved[part].items():
            torch.testing.assert_close(again[key], value, msg=key)


def test_the_fixture_exercises_every_aid(saved_before_split):
    fixture = saved_before_split
    assert sorted(fixture["variants"]) == VARIANTS
    scaled = fixture["variants"]["lr_scale_frobenius"]
    encoder, _ = _built(fixture, scaled["extra"])
    layers = [m for m in encoder.modules() if isinstance(m, FactorPair)]
    assert layers and all(lr_scale(layer) == 2.0 for layer in layers)
    guided = fixture["variants"]["guide_mid_schedule"]
    assert int(guided["encoder"]["lowrank_guide.step"]) == 3
    assert any(key.endswith(".guide") for key in guided["encoder"])
    encoder, _ = _built(fixture, guided["extra"])
    encoder.load_state_dict(guided["encoder"], strict=True)
    layer = next(m for m in encoder.modules() if isinstance(m, FactorPair))
    assert layer_guide(layer).alpha == pytest.approx(guide_alpha(3, 10, "cosine"))
