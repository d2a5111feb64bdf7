"""A model of our classes refuses a checkpoint that does not fit it, and so does every model our entry
points build, dense ones too; a dense model elsewhere loads as stock ESPnet loads it; ESPnet's
documented partial loading still works."""

from pathlib import Path

import pytest
import torch
from espnet2.torch_utils.load_pretrained_model import load_pretrained_model

from espnet_lowrank import registration
from espnet_lowrank.model_config import build_model
from espnet_lowrank.strict_loading import SHOWN_KEYS, mismatch_message

TINY = Path(__file__).resolve().parent / "conf"


def _model(config: str):
    return build_model(TINY / config, vocab_size=20)


@pytest.fixture
def our_entry_point(monkeypatch):
    """This process as our asr_train or asr_inference: what registration adds applies to every model."""
    monkeypatch.setattr(registration, "_every_model", False)
    registration.for_every_model()


def test_in_our_entry_points_a_dense_model_refuses_a_low_rank_checkpoint_even_when_not_strict(our_entry_point):
    checkpoint = _model("tiny_lowrank.yaml").state_dict()
    dense = _model("tiny_dense.yaml")
    with pytest.raises(RuntimeError) as error:
        dense.load_state_dict(checkpoint, strict=False)  # as ESPnet's build_model_from_file does
    message = str(error.value)
    assert "does not fit the ESPnetASRModel its config builds" in message
    assert "missing keys [ctc" not in message  # what fits is not named
    assert "missing keys [decoder.decoders.0.feed_forward.w_1.weight" in message
    assert "unexpected keys [decoder.decoders.0.feed_forward.w_1.U" in message
    assert "(31 in all)" in message and "(62 in all)" in message  # counted, not all listed


def test_elsewhere_a_dense_model_loads_what_fits_as_stock_espnet_does():
    checkpoint = _model("tiny_lowrank.yaml").state_dict()
    dense = _model("tiny_dense.yaml")
    result = dense.load_state_dict(checkpoint, strict=False)
    assert "decoder.decoders.0.feed_forward.w_1.weight" in result.missing_keys
    assert "decoder.decoders.0.feed_forward.w_1.U" in result.unexpected_keys
    assert torch.equal(dense.ctc.ctc_lo.weight, checkpoint["ctc.ctc_lo.weight"])


def test_low_rank_model_keeps_its_more_precise_message():
    dense_checkpoint = _model("tiny_dense.yaml").state_dict()
    with pytest.raises(RuntimeError) as error:
        _model("tiny_lowrank.yaml").load_state_dict(dense_checkpoint, strict=False)
    message = str(error.value)
    assert "does not fit this LowRankConformerEncoder at 'encoder.'" in message
    assert "its config builds" not in message


@pytest.mark.parametrize("config", ["tiny_dense.yaml", "tiny_lowrank.yaml"])
def test_a_fitting_checkpoint_loads_every_weight_when_not_strict(config):
    source, target = _model(config), _model(config)
    target.load_state_dict(source.state_dict(), strict=False)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_strict_load_is_refused_as_before():
    checkpoint = _model("tiny_lowrank.yaml").state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        _model("tiny_dense.yaml").load_state_dict(checkpoint)


def test_a_missing_key_alone_is_refused(our_entry_point):
    dense = _model("tiny_dense.yaml")
    checkpoint = dense.state_dict()
    del checkpoint["ctc.ctc_lo.bias"]
    with pytest.raises(RuntimeError, match=r"missing keys \[ctc.ctc_lo.bias\]; unexpected keys \[\]"):
        dense.load_state_dict(checkpoint, strict=False)


def test_init_param_keeps_espnet_partial_loading(tmp_path):
    """--init_param path:src:dst and --ignore_init_mismatch load parts of another model, as documented."""
    low_rank = _model("tiny_lowrank.yaml")
    torch.save(low_rank.state_dict(), tmp_path / "lowrank.pth")
    dense = _model("tiny_dense.yaml")
    load_pretrained_model(f"{tmp_path}/lowrank.pth:ctc:ctc", dense, ignore_init_mismatch=False)
    assert torch.equal(dense.ctc.ctc_lo.weight, low_rank.ctc.ctc_lo.weight)
    other = _model("tiny_dense.yaml")
    load_pretrained_model(str(tmp_path / "lowrank.pth"), other, ignore_init_mismatch=True)
    assert torch.equal(other.decoder.embed[0].weight, low_rank.decoder.embed[0].weight)


def test_the_message_lists_a_few_keys_and_counts_the_rest():
    message = mismatch_message("m", [f"k{i:02d}" for i in range(20)], ["x"])
    assert f"k{SHOWN_KEYS - 1:02d}" in message and f"k{SHOWN_KEYS:02d}" not in message
    assert "(20 in all)" in message and "unexpected keys [x]" in message
    assert mismatch_message("m", [], []) == ""
