"""Our classes inside ESPnet's own ASR task: registration, build, --init, reload."""

import re
from pathlib import Path

import pytest
import torch
from espnet2.tasks.asr import ASRTask, decoder_choices, encoder_choices

from espnet_lowrank.model_config import build_model, count_parameters
from espnet_lowrank.surgery import low_rank_layers

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf"


def test_import_registers_both_names():
    assert encoder_choices.get_class("lowrank_conformer").__name__ == "LowRankConformerEncoder"
    assert decoder_choices.get_class("lowrank_transformer").__name__ == "LowRankTransformerDecoder"
    args = ASRTask.get_parser().parse_args(
        ["--encoder", "lowrank_conformer", "--decoder", "lowrank_transformer"]
    )
    assert args.encoder == "lowrank_conformer"


@pytest.mark.parametrize("init", ["xavier_uniform", "kaiming_normal"])
def test_svd_init_survives_espnet_init(init):
    model = build_model(TINY / "tiny_lowrank.yaml", vocab_size=20, overrides={"init": init})
    layers = low_rank_layers(model)
    assert len(layers) == 2 * 10 + 1 * 10 + 1  # blocks, decoder, subsampling
    for name, layer in layers:
        gram_u, gram_v = layer.U.T @ layer.U, layer.V @ layer.V.T
        # spectral factors are balanced and orthogonal: UᵀU = VVᵀ = diag(S)
        torch.testing.assert_close(gram_u, gram_v, atol=1e-4, rtol=1e-3, msg=name)
        off_diagonal = gram_u - torch.diag(torch.diagonal(gram_u))
        assert off_diagonal.abs().max() < 1e-4, name
        assert torch.all(layer.bias == 0), name  # ESPnet's --init zeroes biases


def test_without_svd_fix_espnet_init_would_break_the_factors():
    """The check above can fail: factors drawn independently are not balanced."""
    model = build_model(TINY / "tiny_lowrank.yaml", vocab_size=20, overrides={"init": "xavier_uniform"})
    name, layer = low_rank_layers(model)[0]
    torch.nn.init.xavier_uniform_(layer.U)
    torch.nn.init.xavier_uniform_(layer.V)
    assert not torch.allclose(layer.U.T @ layer.U, layer.V @ layer.V.T, atol=1e-4)


def _doc_table():
    """(folder, vocab, config, total, encoder, decoder, ctc) for every row of configs.md's count tables:
    the LibriSpeech-shaped ones (conf/tuning, 5000 BPE) and the demo-size ones (conf/compare, 28 chars)."""
    pattern = r"^\| `(\S+\.yaml)` \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|"
    librispeech, demo = (ROOT / "docs" / "configs.md").read_text().split("## Demo-size configs")
    rows = [("tuning", 5000, *row) for row in re.findall(pattern, librispeech, flags=re.M)]
    rows += [("compare", 28, *row) for row in re.findall(pattern, demo, flags=re.M)]
    assert len(rows) == 11 + 21
    return rows


@pytest.mark.parametrize("row", _doc_table(), ids=lambda row: row[2])
def test_configs_build_with_the_counts_in_the_doc(row):
    folder, vocab, name, total, encoder, decoder, ctc = row
    model = build_model(ROOT / "conf" / folder / name, vocab_size=vocab)
    measured = [count_parameters(part) / 1e6 for part in (model, model.encoder, model.decoder, model.ctc)]
    assert [f"{m:.2f}" for m in measured] == [total, encoder, decoder, ctc]


def test_lrsms_has_at_least_half_fewer_parameters():
    dense = count_parameters(build_model(ROOT / "conf/tuning/train_asr_conformer.yaml", vocab_size=5000))
    lrsms = count_parameters(build_model(ROOT / "conf/tuning/train_asr_lrsms.yaml", vocab_size=5000))
    assert dense == 34_229_520
    assert dense / lrsms >= 2.0


def test_matching_checkpoint_loads_every_weight():
    source = build_model(TINY / "tiny_lowrank.yaml", vocab_size=20)
    target = build_model(TINY / "tiny_lowrank.yaml", vocab_size=20)
    target.load_state_dict(source.state_dict(), strict=False)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "checkpoint_config,missing,unexpected",
    [
        ("tiny_dense.yaml", "encoder.encoders.0.conv_module.pointwise_conv1.U", "encoder.encoders.0.conv_module.pointwise_conv1.weight"),
        ("tiny_lowrank_other_ranks.yaml", None, None),
    ],
)
def test_mismatched_checkpoint_raises_even_when_not_strict(checkpoint_config, missing, unexpected):
    checkpoint = build_model(TINY / checkpoint_config, vocab_size=20).state_dict()
    model = build_model(TINY / "tiny_lowrank.yaml", vocab_size=20)
    with pytest.raises(RuntimeError) as error:
        model.load_state_dict(checkpoint, strict=False)  # as ESPnet does
    message = str(error.value)
    if missing:
        assert "does not fit this LowRankConformerEncoder at 'encoder.'" in message
        assert missing in message and unexpected in message
        assert "does not fit this LowRankTransformerDecoder at 'decoder.'" in message
    else:
        assert "size mismatch for encoder.encoders.0.self_attn.linear_q.U" in message


def test_low_rank_checkpoint_into_config_with_a_dense_group_raises():
    checkpoint = build_model(TINY / "tiny_lowrank.yaml", vocab_size=20).state_dict()
    config = (TINY / "tiny_lowrank.yaml").read_text().replace(
        "    lowrank_convolution: {mapping: explicit, ratios: [0.5, 0.25]}\n", ""
    )
    assert "lowrank_convolution" not in config
    path = TINY.parent / "tmp_dense_conv.yaml"
    path.write_text(config)
    try:
        model = build_model(path, vocab_size=20)
    finally:
        path.unlink()
    with pytest.raises(RuntimeError, match=r"missing keys \[encoder.encoders.0.conv_module.pointwise_conv1.weight"):
        model.load_state_dict(checkpoint, strict=False)
