"""``lowrank_e_branchformer``: ESPnet's E-Branchformer with factorised groups."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
import yaml
from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder
from espnet2.bin.asr_inference import Speech2Text
from espnet2.tasks.asr import encoder_choices

from espnet_lowrank.e_branchformer import LowRankEBranchformerEncoder
from espnet_lowrank.model_config import build_model, dense_twin, read_config
from espnet_lowrank.surgery import factorise_blocks, low_rank_layers
from espnet_lowrank.merging import merge
from tiny_data import train_command, write_tiny_data

CONF = Path(__file__).resolve().parent / "conf"
TINY = dict(output_size=32, attention_heads=4, cgmlp_linear_units=64, cgmlp_conv_kernel=5, linear_units=64,
            num_blocks=3, dropout_rate=0.0, positional_dropout_rate=0.0, merge_conv_kernel=3)
HALF = {"mapping": "constant", "ratio": 0.5}
FULL = {"mapping": "constant", "ratio": 1.0}
#: factorised layers per block, by group, with macaron feed-forward on
PER_BLOCK = {"attention": 4, "feed_forward": 4, "cgmlp": 2, "merge": 1}


def _speech(batch=2, frames=40, dim=20):
    return torch.randn(batch, frames, dim), torch.tensor([frames, frames - 9])


def test_registered_as_an_espnet_encoder():
    assert encoder_choices.get_class("lowrank_e_branchformer") is LowRankEBranchformerEncoder


@pytest.mark.parametrize("group", list(PER_BLOCK))
@pytest.mark.parametrize("macaron", [True, False])
def test_forward_backward_per_group(group, macaron):
    encoder = LowRankEBranchformerEncoder(20, **TINY, use_ffn=True, macaron_ffn=macaron, **{f"lowrank_{group}": HALF})
    layers = low_rank_layers(encoder)
    expected = 2 if group == "feed_forward" and not macaron else PER_BLOCK[group]
    assert len(layers) == expected * 3
    assert all(name.split(".", 2)[2] in LowRankEBranchformerEncoder.LOWRANK_GROUPS[group] for name, _ in layers)
    out, out_lengths, _ = encoder(*_speech())
    assert out.shape == (2, out_lengths.max(), 32)
    (out * torch.randn_like(out)).sum().backward()
    for _, layer in layers:
        assert layer.U.grad.abs().sum() > 0 and layer.V.grad.abs().sum() > 0


def test_without_feed_forward_its_group_has_nothing_to_factorise():
    with pytest.raises(ValueError, match="lowrank_feed_forward"):
        LowRankEBranchformerEncoder(20, **TINY, use_ffn=False, lowrank_feed_forward=HALF)


def test_ranks_follow_the_mapping():
    encoder = LowRankEBranchformerEncoder(
        20, **TINY, use_ffn=True, lowrank_merge={"mapping": "explicit", "ratios": [1, 0.5, 0.25]},
        lowrank_cgmlp={"mapping": "linear", "start": 0.25, "end": 0.75},
    )
    # merge is 64 -> 32 (ratio of 32); the first cgMLP projection 32 -> 64 (ratio of 32), the second 32 -> 32
    assert [encoder.encoders[i].merge_proj.rank for i in range(3)] == [32, 16, 8]
    assert [encoder.encoders[i].cgmlp.channel_proj1[0].rank for i in range(3)] == [8, 16, 24]


@pytest.mark.parametrize("macaron", [True, False])
def test_full_rank_reproduces_the_dense_encoder(macaron):
    settings = dict(**TINY, use_ffn=True, macaron_ffn=macaron)
    torch.manual_seed(1)
    dense = EBranchformerEncoder(20, **settings).eval()
    factorised = copy.deepcopy(dense)  # surgery on the dense encoder's own weights
    factorise_blocks(factorised.encoders, LowRankEBranchformerEncoder.LOWRANK_GROUPS, {group: FULL for group in PER_BLOCK})
    torch.manual_seed(1)  # our class, from the same random stream
    ours = LowRankEBranchformerEncoder(20, **settings, **{f"lowrank_{group}": FULL for group in PER_BLOCK}).eval()
    per_block = sum(PER_BLOCK.values()) - (0 if macaron else 2)
    speech, lengths = _speech()
    with torch.no_grad():
        reference = dense(speech, lengths)[0]
        for model in (factorised, ours):
            assert len(low_rank_layers(model)) == 3 * per_block
            assert (model(speech, lengths)[0] - reference).abs().max() <= 1e-4


def test_its_dense_twin_is_espnets_and_its_checkpoint_is_refused(tmp_path):
    twin = dense_twin(read_config(CONF / "tiny_lowrank_e_branchformer.yaml"))
    assert twin["encoder"] == "e_branchformer"
    (tmp_path / "dense.yaml").write_text(yaml.safe_dump(twin))
    dense = build_model(tmp_path / "dense.yaml", vocab_size=20)
    assert type(dense.encoder) is EBranchformerEncoder
    with pytest.raises(RuntimeError, match="does not fit this LowRankEBranchformerEncoder at 'encoder.'"):
        build_model(CONF / "tiny_lowrank_e_branchformer.yaml", vocab_size=20).load_state_dict(
            dense.state_dict(), strict=False)


def test_trains_and_decodes_end_to_end(tmp_path):
    data = write_tiny_data(tmp_path / "data")
    exp = tmp_path / "exp"
    result = subprocess.run(train_command(sys.executable, CONF / "tiny_lowrank_e_branchformer.yaml", data, exp),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    speech2text = Speech2Text(asr_train_config=str(exp / "config.yaml"), asr_model_file=str(exp / "1epoch.pth"),
                              device="cpu", beam_size=2, nbest=1)
    assert isinstance(speech2text.asr_model.encoder, LowRankEBranchformerEncoder)
    assert len(low_rank_layers(speech2text.asr_model.encoder)) == 2 * sum(PER_BLOCK.values())
    audio, _ = soundfile.read(data["wav"], dtype="float32")
    assert isinstance(speech2text(audio)[0][0], str)
    merged = merge(exp / "config.yaml", exp / "1epoch.pth", tmp_path / "merged")  # back to ESPnet's own
    assert merged["max_difference"] <= 1e-4 and "encoder: e_branchformer" in merged["config"].read_text()
