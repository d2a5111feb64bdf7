import pytest

from espnet_lowrank.rank_mapping import break_even_rank, build_rank_mapping, ratio_to_rank


def test_linear_mapping_moves_from_start_to_end():
    ratios = build_rank_mapping({"mapping": "linear", "start": 0.25, "end": 0.75}, "k").ratios(12)
    assert len(ratios) == 12
    assert ratios[0] == pytest.approx(0.25) and ratios[-1] == pytest.approx(0.75)
    steps = [b - a for a, b in zip(ratios, ratios[1:])]
    assert steps == pytest.approx([0.5 / 11] * 11)


def test_linear_mapping_may_decrease():
    ratios = build_rank_mapping({"mapping": "linear", "start": 0.5, "end": 0.1}, "k").ratios(5)
    assert ratios == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])


def test_constant_and_explicit_mappings():
    assert build_rank_mapping({"mapping": "constant", "ratio": 0.3}, "k").ratios(3) == [0.3] * 3
    explicit = build_rank_mapping({"mapping": "explicit", "ratios": [1, 0.5, 0.25]}, "k")
    assert explicit.ratios(3) == [1.0, 0.5, 0.25]
    assert build_rank_mapping({"mapping": "explicit", "ratios": [None, 0.5]}, "k").ratios(2) == [None, 0.5]


def test_ratio_is_relative_to_the_smaller_dimension():
    assert ratio_to_rank(0.5, 256, 1024) == 128
    assert ratio_to_rank(0.5, 1024, 256) == 128
    assert ratio_to_rank(0.12, 256, 256) == 31  # 30.72 rounds half up


def test_rounding_to_a_multiple_never_zero_never_above_full():
    assert ratio_to_rank(0.12, 256, 256, multiple_of=8) == 32
    assert ratio_to_rank(0.01, 256, 256, multiple_of=8) == 8
    assert ratio_to_rank(0.001, 256, 256) == 1
    assert ratio_to_rank(1.0, 20, 30, multiple_of=8) == 20
    assert ratio_to_rank(1.0, 256, 256, multiple_of=8) == 256


def test_break_even_rank():
    assert break_even_rank(256, 256) == 128
    assert break_even_rank(256, 1024) == pytest.approx(204.8)
    # one rank below break-even is cheaper than dense, one above is dearer
    assert 204 * (256 + 1024) < 256 * 1024 < 205 * (256 + 1024)


@pytest.mark.parametrize(
    "conf,message",
    [
        ({"mapping": "constant", "ratio": 0}, r"enc.lowrank_attention.ratio=0"),
        ({"mapping": "constant", "ratio": 1.5}, r"enc.lowrank_attention.ratio=1.5"),
        ({"mapping": "constant", "ratio": "half"}, r"enc.lowrank_attention.ratio='half'"),
        ({"mapping": "linear", "start": 0.5, "end": -0.1}, r"enc.lowrank_attention.end=-0.1"),
        ({"mapping": "explicit", "ratios": [0.5, 2]}, r"enc.lowrank_attention.ratios\[1\]=2"),
        ({"mapping": "explicit", "ratios": [None, None]}, r"keeps every block dense: set enc.lowrank_attention to null"),
        ({"mapping": "cubic", "ratio": 0.5}, r"enc.lowrank_attention.mapping='cubic'"),
        ({"ratio": 0.5}, r"enc.lowrank_attention.mapping=None"),
        ({"mapping": "constant", "ratio": 0.5, "strat": 1}, r"enc.lowrank_attention.strat"),
        ({"mapping": "linear", "start": 0.5}, r"enc.lowrank_attention.end is required"),
        ({"mapping": "constant", "ratio": 0.5, "multiple_of": 0}, r"multiple_of=0"),
        (0.25, r"enc.lowrank_attention=0.25"),
    ],
)
def test_invalid_settings_name_the_key_and_value(conf, message):
    with pytest.raises(ValueError, match=message):
        build_rank_mapping(conf, "enc.lowrank_attention")


def test_explicit_list_of_wrong_length():
    mapping = build_rank_mapping({"mapping": "explicit", "ratios": [0.5, 0.5]}, "enc.lowrank_ffn")
    with pytest.raises(ValueError, match=r"enc.lowrank_ffn.ratios has 2 entries .* 12 blocks"):
        mapping.ratios(12)
