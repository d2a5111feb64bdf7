"""espnet-lowrank report and bench on tiny configs."""

import json
import subprocess
import sys
from pathlib import Path


from espnet_lowrank.model_config import build_model, count_parameters
from espnet_lowrank.tools import report

CONF = Path(__file__).resolve().parent / "conf"


def test_report_totals_equal_the_real_models():
    result = report.report(CONF / "tiny_lowrank.yaml", vocab_size=20)
    lowrank = count_parameters(build_model(CONF / "tiny_lowrank.yaml", vocab_size=20))
    dense = count_parameters(build_model(CONF / "tiny_dense.yaml", vocab_size=20))
    assert result["totals"]["params"] == lowrank
    assert result["totals"]["dense_params"] == dense  # the dense twin is tiny_dense.yaml
    layers = result["layers"]
    assert len(layers) == 31
    q0 = next(r for r in layers if r["module"] == "encoder.encoders.0.self_attn.linear_q")
    assert (q0["group"], q0["block"], q0["rank"], q0["ratio"]) == ("attention", 0, 16, 0.5)
    assert q0["params"] == 16 * (32 + 32) + 32 and q0["macs"] == 16 * 64
    conv = next(r for r in layers if r["module"] == "encoder.embed.conv.2")
    assert (conv["group"], conv["block"], conv["rank"]) == ("input_layer", -1, 16)
    assert (conv["d_out"], conv["d_in"]) == (32, 32 * 3 * 3)
    assert {r["group"] for r in layers if r["part"] == "decoder"} == {
        "self_attention", "src_attention", "feed_forward"}


def test_report_cli_json_and_plot(tmp_path):
    png = tmp_path / "ranks.png"
    result = subprocess.run(
        [sys.executable, "-m", "espnet_lowrank.cli", "report", str(CONF / "tiny_lowrank.yaml"),
         "--vocab", "20", "--json", "--plot", str(png)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert data["totals"]["params"] < data["totals"]["dense_params"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_table_lists_every_layer():
    text = report.format_report(report.report(CONF / "tiny_lowrank.yaml", vocab_size=20))
    assert text.count("encoder.encoders.") == 20 and "total parameters" in text


def test_bench_runs_a_tiny_pair_and_emits_json():
    result = subprocess.run(
        [sys.executable, "-m", "espnet_lowrank.cli", "bench", str(CONF / "tiny_dense.yaml"),
         str(CONF / "tiny_lowrank.yaml"), "--vocab", "20", "--batch", "2", "--seconds", "1",
         "--text_length", "5", "--repeats", "2", "--warmup", "0", "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    dense, lowrank = data["results"]
    assert len(dense["train_step_s"]) == 2 and all(t > 0 for t in lowrank["encoder_s"])
    assert dense["train_step_s_speedup"] == 1.0 and dense["params_ratio"] == 1.0
    assert lowrank["params_ratio"] > 1.0 and lowrank["train_flop_speedup"] > 1.0
    assert lowrank["train_flops"] > lowrank["encoder_flops"] > 0
    parts = lowrank["train_flops_by_part"]
    # torch attributes a few backward ops to two modules: parts may overlap slightly
    assert 0.9 * lowrank["train_flops"] < sum(parts.values()) < 1.02 * lowrank["train_flops"]
    # tiny_lowrank factorises the subsampling: its FLOPs shrink; the CTC layer stays dense
    assert parts["encoder.embed"] < dense["train_flops_by_part"]["encoder.embed"]
    assert parts["ctc"] == dense["train_flops_by_part"]["ctc"] > 0
    assert parts["encoder.encoders"] < dense["train_flops_by_part"]["encoder.encoders"]
    assert lowrank["train_memory_mb"] > 0 and "cores" in data["machine"]


def test_compare_configs_are_the_demo_lrsms_and_its_ablations():
    from espnet_lowrank.surgery import low_rank_layers

    root = CONF.parents[1] / "conf"
    lrsms = report.report(root / "train_asr_lrsms_demo.yaml", vocab_size=28)["totals"]
    dense = count_parameters(build_model(root / "compare" / "train_asr_conformer_demo.yaml", vocab_size=28))
    assert lrsms["dense_params"] == dense  # the dense config is exactly LR-SMS's dense twin
    for name in ("lowrank_attention12", "lowrank_ffn50", "lrsms_random_init", "lrsms_constant",
                 "lrsms_subsampling", "lrsms_below_break_even", "lrsms_subsampling375"):
        model = build_model(root / "compare" / f"train_asr_{name}_demo.yaml", vocab_size=28)
        assert low_rank_layers(model), name
        assert count_parameters(model) < dense, name


def test_the_demo_e_branchformer_pair_are_twins_below_break_even():
    """results.md sets the two side by side: the dense one must be exactly the low-rank one's dense twin,
    and the low-rank one must be the demo LR-SMS but for its encoder."""
    from espnet_lowrank.model_config import dense_twin, read_config
    from espnet_lowrank.rank_mapping import break_even_rank
    from espnet_lowrank.surgery import low_rank_layers

    root = CONF.parents[1] / "conf"
    lowrank = read_config(root / "compare" / "train_asr_lrsms_e_branchformer_demo.yaml")
    assert dense_twin(lowrank) == read_config(root / "compare" / "train_asr_e_branchformer_demo.yaml")
    demo = read_config(root / "train_asr_lrsms_demo.yaml")
    assert {k: v for k, v in lowrank.items() if not k.startswith("encoder")} == \
        {k: v for k, v in demo.items() if not k.startswith("encoder")}
    model = build_model(root / "compare" / "train_asr_lrsms_e_branchformer_demo.yaml", vocab_size=28)
    layers = [layer for _, layer in low_rank_layers(model)]
    groups = {name.split(".")[3] for name, _ in low_rank_layers(model) if name.startswith("encoder.")}
    assert {"attn", "feed_forward", "feed_forward_macaron", "cgmlp", "merge_proj"} <= groups
    assert all(layer.rank < break_even_rank(layer.in_features, layer.out_features) for layer in layers)


def test_the_demo_lrsms_has_no_layer_at_break_even(caplog):
    """The earlier demo LR-SMS (ratio 0.5) put 144x144 weights at rank 72, where U·V is as large as the weight."""
    from espnet_lowrank.rank_mapping import break_even_rank
    from espnet_lowrank.surgery import low_rank_layers

    root = CONF.parents[1] / "conf"
    with caplog.at_level("WARNING"):
        build_model(root / "compare" / "train_asr_lrsms_plain_demo.yaml", vocab_size=28)
    assert sum("break-even" in record.getMessage() for record in caplog.records) == 21
    for config in ("train_asr_lrsms_demo.yaml", "compare/train_asr_lrsms_below_break_even_demo.yaml",
                   "compare/train_asr_lrsms_attention12_ffn60_demo.yaml"):
        caplog.clear()
        with caplog.at_level("WARNING"):
            model = build_model(root / config, vocab_size=28)
        assert not [record for record in caplog.records if "break-even" in record.getMessage()], config
        layers = [layer for _, layer in low_rank_layers(model)]
        assert layers and all(layer.rank < break_even_rank(layer.in_features, layer.out_features)
                              for layer in layers), config


def test_the_subsampling375_config_is_the_default_but_for_its_subsampling():
    """results.md sets it beside the default LR-SMS: the subsampling's rank must be all that differs."""
    from espnet_lowrank.model_config import read_config
    from espnet_lowrank.surgery import low_rank_layers

    root = CONF.parents[1] / "conf"
    default = read_config(root / "train_asr_lrsms_demo.yaml")
    variant = read_config(root / "compare" / "train_asr_lrsms_subsampling375_demo.yaml")
    assert variant["encoder_conf"].pop("lowrank_input_layer")["ratio"] == 0.375
    assert variant == default
    ranks = dict((name, layer.rank) for name, layer in low_rank_layers(
        build_model(root / "compare" / "train_asr_lrsms_subsampling375_demo.yaml", vocab_size=28)))
    assert ranks["encoder.embed.conv.2"] == 56  # 0.375 of 144 channels, to a multiple of 8


def test_the_reallocated_lrsms_moves_rank_within_the_default_budget():
    """attention12_ffn60 answers "same parameters, rank moved from attention to feed-forward": it must
    not buy its accuracy with a larger budget than the demo's LR-SMS."""
    from espnet_lowrank.surgery import low_rank_layers

    root = CONF.parents[1] / "conf"
    default = build_model(root / "train_asr_lrsms_demo.yaml", vocab_size=28)
    moved = build_model(root / "compare" / "train_asr_lrsms_attention12_ffn60_demo.yaml", vocab_size=28)
    assert count_parameters(moved) <= count_parameters(default)

    def total_rank(model, part):
        return sum(layer.rank for name, layer in low_rank_layers(model) if part in name)

    assert total_rank(moved, "feed_forward") > total_rank(default, "feed_forward")
    assert total_rank(moved, "attn") < total_rank(default, "attn")


def test_bench_times_a_guided_config_with_and_after_its_guides():
    from espnet_lowrank.tools.bench import bench

    result = bench([CONF / "tiny_lowrank.yaml", CONF / "tiny_lowrank_guided.yaml"], vocab=20, batch=1,
                   seconds=1, text_length=3, repeats=1, warmup=0, device="cpu")
    plain, during, after = result["results"]  # tiny_lowrank, then the guided twin twice
    assert during["config"].endswith("[guide on]") and after["config"].endswith("[guide done]")
    # half way through the schedule both paths run; after it, no dense path
    assert after["train_flops"] == plain["train_flops"] < during["train_flops"]
    assert after["params"] == plain["params"] < during["params"]
