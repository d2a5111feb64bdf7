import copy

import pytest
import torch
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from conftest import TINY_ENCODER
from espnet_lowrank import LowRankConformerEncoder, LowRankTransformerDecoder
from espnet_lowrank.architectures import BY_CHOICE
from espnet_lowrank.layers import FactorPair, LowRankConv2d, LowRankLinear, LowRankPointwiseConv1d
from espnet_lowrank.surgery import factorise_blocks, low_rank_layers

MAPPINGS = {
    "constant": {"mapping": "constant", "ratio": 0.5},
    "linear": {"mapping": "linear", "start": 0.25, "end": 0.75, "multiple_of": 4},
    "explicit": {"mapping": "explicit", "ratios": [1.0, 0.5, 0.25]},
}
FULL = {"mapping": "constant", "ratio": 1.0}
POSITIONS = {
    "legacy": dict(rel_pos_type="legacy"),
    "latest": dict(rel_pos_type="latest"),
    "abs_pos": dict(pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn"),
}


def _speech(batch=2, frames=40, dim=20):
    return torch.randn(batch, frames, dim), torch.tensor([frames, frames - 9])


@pytest.mark.parametrize("group", ["attention", "feed_forward", "convolution"])
@pytest.mark.parametrize("mapping", list(MAPPINGS))
@pytest.mark.parametrize("init", ["svd", "random"])
@pytest.mark.parametrize("macaron", [True, False])
def test_encoder_forward_backward(group, mapping, init, macaron):
    encoder = LowRankConformerEncoder(
        20, **TINY_ENCODER, macaron_style=macaron, rel_pos_type="latest",
        **{f"lowrank_{group}": MAPPINGS[mapping]}, lowrank_init=init,
    )
    expected = 4 if group == "attention" else (2 if group == "convolution" else 4 if macaron else 2)
    layers = low_rank_layers(encoder)
    assert len(layers) == expected * 3
    assert all(name.split(".", 2)[2] in BY_CHOICE["lowrank_conformer"].groups[group] for name, _ in layers)
    speech, lengths = _speech()
    out, out_lengths, _ = encoder(speech, lengths)
    assert out.shape == (2, out_lengths.max(), 32)
    # a random projection: the sum of a LayerNorm output is constant, its gradient zero
    (out * torch.randn_like(out)).sum().backward()
    for _, layer in layers:
        assert layer.U.grad.abs().sum() > 0 and layer.V.grad.abs().sum() > 0


@pytest.mark.parametrize("position", list(POSITIONS))
def test_encoder_all_groups_with_each_position_encoding(position):
    encoder = LowRankConformerEncoder(
        20, **TINY_ENCODER, macaron_style=True, **POSITIONS[position],
        lowrank_attention=MAPPINGS["linear"], lowrank_feed_forward=MAPPINGS["constant"],
        lowrank_convolution=MAPPINGS["explicit"],
    )
    assert len(low_rank_layers(encoder)) == 3 * (4 + 4 + 2)
    assert isinstance(encoder.encoders[0].conv_module.pointwise_conv1, LowRankPointwiseConv1d)
    out, _, _ = encoder(*_speech())
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(out).all()


def test_encoder_ranks_follow_the_mapping():
    encoder = LowRankConformerEncoder(
        20, **TINY_ENCODER, lowrank_attention={"mapping": "explicit", "ratios": [1, 0.5, 0.25]},
        lowrank_feed_forward={"mapping": "linear", "start": 0.25, "end": 0.75},
    )
    assert [encoder.encoders[i].self_attn.linear_q.rank for i in range(3)] == [32, 16, 8]
    # feed-forward is 32 -> 64: ratio is relative to min(32, 64) = 32
    assert [encoder.encoders[i].feed_forward.w_1.rank for i in range(3)] == [8, 16, 24]
    assert encoder.lowrank_ranks["2.feed_forward.w_2"] == 24


@pytest.mark.parametrize("position", list(POSITIONS))
def test_full_rank_encoder_reproduces_the_dense_encoder(position):
    settings = dict(**TINY_ENCODER, macaron_style=True, **POSITIONS[position])
    torch.manual_seed(1)
    dense = ConformerEncoder(20, **settings).eval()
    # 1) surgery on the dense encoder's own weights
    factorised = copy.deepcopy(dense)
    factorise_blocks(
        factorised.encoders, BY_CHOICE["lowrank_conformer"].groups,
        {"attention": FULL, "feed_forward": FULL, "convolution": FULL},
    )
    # 2) our class, built from the same random stream as the dense one
    torch.manual_seed(1)
    ours = LowRankConformerEncoder(
        20, **settings, lowrank_attention=FULL, lowrank_feed_forward=FULL, lowrank_convolution=FULL
    ).eval()
    speech, lengths = _speech()
    with torch.no_grad():
        reference = dense(speech, lengths)[0]
        for model in (factorised, ours):
            assert len(low_rank_layers(model)) == 30
            assert (model(speech, lengths)[0] - reference).abs().max() <= 1e-4


def test_full_rank_decoder_reproduces_the_dense_decoder():
    settings = dict(attention_heads=4, linear_units=64, num_blocks=2, dropout_rate=0.0)
    torch.manual_seed(2)
    dense = TransformerDecoder(11, 32, **settings).eval()
    torch.manual_seed(2)
    ours = LowRankTransformerDecoder(
        11, 32, **settings, lowrank_self_attention=FULL, lowrank_src_attention=FULL,
        lowrank_feed_forward=FULL,
    ).eval()
    assert len(low_rank_layers(ours)) == 2 * (4 + 4 + 2)
    memory, memory_lengths = torch.randn(2, 9, 32), torch.tensor([9, 6])
    tokens, token_lengths = torch.randint(0, 11, (2, 5)), torch.tensor([5, 3])
    with torch.no_grad():
        reference = dense(memory, memory_lengths, tokens, token_lengths)[0]
        result = ours(memory, memory_lengths, tokens, token_lengths)[0]
    assert (result - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("group", ["self_attention", "src_attention", "feed_forward"])
@pytest.mark.parametrize("mapping", list(MAPPINGS))
def test_decoder_forward_backward_and_beam_scoring(group, mapping):
    decoder = LowRankTransformerDecoder(
        11, 32, linear_units=64, num_blocks=3, **{f"lowrank_{group}": MAPPINGS[mapping]}
    )
    layers = low_rank_layers(decoder)
    assert len(layers) == 3 * len(BY_CHOICE["lowrank_transformer"].groups[group])
    memory, memory_lengths = torch.randn(2, 9, 32), torch.tensor([9, 6])
    out, _ = decoder(memory, memory_lengths, torch.randint(0, 11, (2, 4)), torch.tensor([4, 2]))
    assert out.shape == (2, 4, 11)
    out.logsumexp(-1).sum().backward()
    assert all(layer.U.grad is not None for _, layer in layers)
    decoder.eval()
    with torch.no_grad():  # the incremental path used by beam search
        logp, states = decoder.batch_score(
            torch.randint(0, 11, (3, 2)), [None] * 3, torch.randn(3, 9, 32)
        )
    assert logp.shape == (3, 11)


def test_unknown_group_is_refused_with_its_name():
    encoder = ConformerEncoder(20, **TINY_ENCODER)
    with pytest.raises(ValueError, match="encoder_conf.lowrank_attn is not a layer group"):
        factorise_blocks(
            encoder.encoders, BY_CHOICE["lowrank_conformer"].groups, {"attn": FULL}, key_prefix="encoder_conf.lowrank_"
        )


def test_group_without_layers_is_refused():
    with pytest.raises(ValueError, match="encoder_conf.lowrank_convolution is set but"):
        LowRankConformerEncoder(20, **TINY_ENCODER, use_cnn_module=False,
                                lowrank_convolution=FULL)


def test_non_pointwise_feed_forward_is_refused():
    with pytest.raises(ValueError, match="feed_forward.w_1 is a MultiLayeredConv1d|w_1 is a Conv1d"):
        LowRankConformerEncoder(20, **TINY_ENCODER, positionwise_layer_type="conv1d",
                                lowrank_feed_forward=FULL)


def test_bad_mapping_in_encoder_conf_names_the_key():
    with pytest.raises(ValueError, match=r"encoder_conf.lowrank_feed_forward.ratio=1.5"):
        LowRankConformerEncoder(20, **TINY_ENCODER,
                                lowrank_feed_forward={"mapping": "constant", "ratio": 1.5})
    with pytest.raises(ValueError, match=r"encoder_conf.lowrank_init='spectral'"):
        LowRankConformerEncoder(20, **TINY_ENCODER, lowrank_attention=FULL,
                                lowrank_init="spectral")


def test_dense_groups_stay_dense():
    encoder = LowRankConformerEncoder(20, **TINY_ENCODER)
    assert low_rank_layers(encoder) == []
    assert not isinstance(encoder.encoders[0].self_attn.linear_q, FactorPair)


@pytest.mark.parametrize("input_layer,convs", [("conv2d", 1), ("conv2d1", 1), ("conv2d2", 1), ("conv2d6", 1), ("conv2d8", 2)])
def test_input_layer_factorises_the_subsampling_front_end(input_layer, convs):
    encoder = LowRankConformerEncoder(
        20, **TINY_ENCODER, input_layer=input_layer,
        lowrank_input_layer={"mapping": "constant", "ratio": 0.25},
    )
    layers = dict(low_rank_layers(encoder))
    assert sum(isinstance(m, LowRankConv2d) for m in layers.values()) == convs
    assert isinstance(encoder.embed.conv[0], torch.nn.Conv2d)  # one input channel: kept dense
    assert encoder.lowrank_ranks["embed.conv.2"] == 8  # 0.25 of min(32, 32·kh·kw)
    # the projection to output_size stays dense: its rank would cap the encoder's input
    assert not any(isinstance(m, (LowRankLinear, LowRankPointwiseConv1d))
                   for m in layers.values())
    speech, lengths = _speech(frames=80)
    out, out_lengths, _ = encoder(speech, lengths)
    assert out.shape == (2, out_lengths.max(), 32)
    (out * torch.randn_like(out)).sum().backward()
    for layer in layers.values():
        assert layer.U.grad.abs().sum() > 0 and layer.V.grad.abs().sum() > 0


def test_full_rank_input_layer_reproduces_the_dense_encoder():
    torch.manual_seed(3)
    dense = ConformerEncoder(20, **TINY_ENCODER).eval()
    torch.manual_seed(3)
    ours = LowRankConformerEncoder(20, **TINY_ENCODER, lowrank_input_layer=FULL).eval()
    # built from the same random stream: the dense front end's own weights, factorised
    assert len(low_rank_layers(ours)) == 1
    speech, lengths = _speech()
    with torch.no_grad():
        assert (ours(speech, lengths)[0] - dense(speech, lengths)[0]).abs().max() <= 1e-4


def test_input_layer_without_convolutions_is_refused():
    with pytest.raises(ValueError, match="encoder_conf.lowrank_input_layer is set but"):
        LowRankConformerEncoder(20, **TINY_ENCODER, input_layer="linear",
                                lowrank_input_layer=FULL)
