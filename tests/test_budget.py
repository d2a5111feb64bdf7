"""Ranks from a parameter budget (``convert --param_ratio``): the greedy allocation
against brute force, the budget hit within 1%, and the converted model."""

import itertools
from pathlib import Path

import pytest
import torch
import yaml

from espnet_lowrank import budget
from espnet_lowrank.model_config import build_model, count_parameters, read_config
from espnet_lowrank.rank_mapping import break_even_rank
from espnet_lowrank.surgery import low_rank_layers
from espnet_lowrank.conversion import budgeted_config, convert

CONF = Path(__file__).resolve().parent / "conf"
TOKENS = ["<blank>", "<unk>", *"abcdefghijklmnop", "<sos/eos>"]


@pytest.fixture
def dense_run(tmp_path):
    """A dense model's weights (made less uniform than an init, as training does) and its config.yaml."""
    torch.manual_seed(1)
    model = build_model(CONF / "tiny_dense.yaml", token_list=TOKENS)
    state = model.state_dict()
    for key, value in state.items():
        if value.dim() >= 2 and value.shape[0] > 1:  # a decaying spectrum, different in every layer
            scale = torch.linspace(1.0, 0.05 + 0.1 * torch.rand(()).item(), value.shape[0])
            state[key] = value * scale.view(-1, *[1] * (value.dim() - 1))
    saved = read_config(CONF / "tiny_dense.yaml")
    saved["token_list"] = TOKENS
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    torch.save(state, tmp_path / "dense.pth")
    return {"model": model, "state": state, "config": tmp_path / "config.yaml", "weights": tmp_path / "dense.pth"}


def _energy(units, ranks):
    return sum(1.0 if ranks[u.name] == u.full_rank else u.energy[ranks[u.name]] for u in units)


@pytest.mark.parametrize("share", [0.3, 0.5, 0.8])
def test_greedy_is_within_one_climb_of_the_brute_force_optimum(dense_run, share):
    units = budget.budget_units(dense_run["model"], dense_run["state"])[-3:]  # the decoder's groups
    multiple_of = 4
    options = [budget.choices(unit, multiple_of) for unit in units]
    most = sum(o[-1][1] for o in options)
    least = sum(o[0][1] for o in options)
    limit = int(least + share * (most - least))
    best = max(sum(energy for _, _, energy in combo) for combo in itertools.product(*options)
               if sum(cost for _, cost, _ in combo) <= limit)
    ranks = budget.allocate(units, limit, multiple_of)
    assert budget.factorised_params(units, ranks) <= limit
    largest_climb = max(o[budget.steepest_climb(o, here)][2] - o[here][2]
                        for o in options for here in range(len(o) - 1))
    assert best - largest_climb <= _energy(units, ranks) <= best + 1e-12


def test_a_unit_worth_break_even_stays_dense():
    """At break-even U·V costs what the dense weight does and keeps less of it."""
    flat = budget.Unit("encoder", "attention", 0, full_rank=16, break_even=8.0, cost_per_rank=32,
                       dense_params=256, energy=tuple(r / 16 for r in range(17)))
    assert [rank for rank, _, _ in budget.choices(flat, 2)] == [2, 4, 6, 16]  # 8 would cost 256 too
    # a flat spectrum: dense keeps 1.0 for 256, rank 6 only 0.375 for 192
    assert budget.allocate([flat], 256, multiple_of=2) == {flat.name: 16}
    assert budget.allocate([flat], 255, multiple_of=2) == {flat.name: 6}


def test_equal_energy_does_not_starve_a_flat_spectrum():
    """Energy per parameter gives a steep spectrum everything and a flat one (a feed-forward layer after a
    short warm-up) the least it can; equal energy first keeps the same share of each."""
    steep = budget.Unit("encoder", "attention", 0, full_rank=32, break_even=16.0, cost_per_rank=64,
                        dense_params=1024, energy=tuple(1 - 0.8 ** r if r < 32 else 1.0 for r in range(33)))
    flat = budget.Unit("encoder", "feed_forward", 0, full_rank=32, break_even=16.0, cost_per_rank=256,
                       dense_params=8192, energy=tuple(r / 32 for r in range(33)))  # wide, as 144 x 576 is
    limit = 2048
    greedy = budget.allocate([steep, flat], limit, multiple_of=1)
    equal = budget.allocate([steep, flat], limit, multiple_of=1, allocator="equal_energy")
    assert greedy == {steep.name: 32, flat.name: 4}  # the steep one dense, the flat one at 1/8 of its energy
    assert equal == {steep.name: 4, flat.name: 7}  # both keep about a fifth, then the rest is climbed
    for ranks in (greedy, equal):
        assert budget.factorised_params([steep, flat], ranks) <= limit
    assert _energy([steep, flat], greedy) > _energy([steep, flat], equal)  # what equal energy gives up


def test_equal_energy_keeps_one_share_in_every_unit_and_spends_the_budget(dense_run):
    units = budget.budget_units(dense_run["model"], dense_run["state"])
    limit = int(0.4 * sum(unit.dense_params for unit in units))
    ranks = budget.allocate(units, limit, multiple_of=2, allocator="equal_energy")
    spent = budget.factorised_params(units, ranks)
    assert spent <= limit and spent > 0.95 * limit
    start = budget.equal_energy_start({u.name: budget.choices(u, 2) for u in units}, limit)
    kept = [budget.choices(u, 2)[start[u.name]][2] for u in units]
    shares = [u.energy[ranks[u.name]] if ranks[u.name] < u.full_rank else 1.0 for u in units]
    assert all(share >= min(kept) for share in shares)  # the climbs only add to the start
    assert min(kept) > min(budget.allocate(units, limit, multiple_of=2)[u.name] / u.full_rank for u in units)


def test_an_unknown_allocator_is_named(dense_run):
    units = budget.budget_units(dense_run["model"], dense_run["state"])
    with pytest.raises(ValueError, match="allocator 'uniform' is unknown; choose one of: energy, equal_energy, no_slower"):
        budget.allocate(units, 10**9, allocator="uniform")


def test_no_slower_spends_the_budget_on_the_ranks_not_measured_slower(dense_run):
    units = budget.budget_units(dense_run["model"], dense_run["state"])
    limit = int(0.5 * sum(unit.dense_params for unit in units))
    energy = budget.allocate(units, limit, multiple_of=2)
    none_slower = {unit.name: frozenset() for unit in units}
    assert budget.allocate(units, limit, 2, "no_slower", none_slower) == energy
    for slower in ({unit.name: frozenset({energy[unit.name]}) for unit in units},  # energy's own choices
                   {unit.name: frozenset(range(6, unit.full_rank, 2)) for unit in units}):  # all but 2 and 4
        ranks = budget.allocate(units, limit, 2, "no_slower", slower)
        assert ranks != energy and budget.factorised_params(units, ranks) <= limit
        assert not [unit.name for unit in units  # dense, its full rank, stays a choice
                    if ranks[unit.name] < unit.full_rank and ranks[unit.name] in slower[unit.name]]


def test_a_budget_no_slower_cannot_reach_names_the_units_slower_at_every_rank(dense_run):
    units = budget.budget_units(dense_run["model"], dense_run["state"])
    slower = {unit.name: frozenset(range(2, unit.full_rank, 2) if unit.part == "encoder" else ()) for unit in units}
    with pytest.raises(ValueError, match=r"ask for a larger --param_ratio; encoder\.attention\[0\], .* train "
                                         r"slower than dense at every rank here, .* try --allocator energy"):
        budget.allocate(units, int(0.3 * sum(unit.dense_params for unit in units)), 2, "no_slower", slower)


@pytest.mark.parametrize("allocator, measured", [("no_slower", None), ("energy", {})])
def test_the_measured_ranks_go_with_no_slower_only(dense_run, allocator, measured):
    units = budget.budget_units(dense_run["model"], dense_run["state"])
    with pytest.raises(ValueError, match=f"allocator '{allocator}': the ranks measured slower go with no_slower"):
        budget.allocate(units, 10**9, 2, allocator, measured)


def _ranks_of(spans: str) -> set:
    """``2-6,10`` (step 2) as {2, 4, 6, 10}; ``-`` as none."""
    ranks = set()
    for span in spans.split(",") if spans != "-" else []:
        low, _, high = span.partition("-")
        ranks.update(range(int(low), int(high or low) + 1, 2))
    return ranks


def test_convert_no_slower_times_the_layers_at_the_batch_and_writes_the_budget(dense_run, tmp_path, capsys,
                                                                               monkeypatch):
    """The shapes come from a real forward pass over the config's batch; the clock is a fake one (a launch
    per matrix product plus its multiply-adds), since which ranks are slower depends on the machine."""
    from espnet_lowrank import layer_speed
    from espnet_lowrank.tools.convert import main

    seen = []

    def seconds(layer, shape, probe):
        seen.append(tuple(shape))
        if hasattr(layer, "rank"):
            tokens = shape.numel() // layer.in_features
            return 2 * 200_000 + tokens * layer.rank * (layer.in_features + layer.out_features)
        out_features, in_features = layer.weight.shape[:2]
        return 200_000 + shape.numel() * out_features

    monkeypatch.setattr(layer_speed, "step_seconds", seconds)
    saved = read_config(dense_run["config"])
    saved.update(batch_type="numel", batch_bins=400000)
    (tmp_path / "numel.yaml").write_text(yaml.safe_dump(saved))
    main(["--dense_config", str(tmp_path / "numel.yaml"), "--dense_model", str(dense_run["weights"]),
          "--param_ratio", "0.6", "--multiple_of", "2", "--allocator", "no_slower", "--time_device", "cpu",
          "--out", str(tmp_path / "lr" / "model.pth")])
    printed = capsys.readouterr().out
    table = printed[printed.index("trains slower than dense at ranks"):printed.index("parameters:")]
    slower = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert set(slower) == {"encoder.attention", "encoder.feed_forward", "encoder.convolution",
                           "decoder.self_attention", "decoder.src_attention", "decoder.feed_forward"}
    assert all(len(ranks) == 2 if group.startswith("encoder") else len(ranks) == 1
               for group, ranks in slower.items())  # one entry per block
    assert {shape[0] for shape in seen} == {3}  # uniform 12 s utterances: the third is the one past 400,000 bins
    # a launch costs 200,000, a multiply-add 1: at the decoder's 123 tokens a 32↔64 pair saves less than a launch
    # from rank 6 on; at the encoder's 1125 a 32×32 one from 13.2 (its parameters break even at 16)
    assert slower["decoder.feed_forward"] == ["6-20"]
    assert slower["encoder.attention"] == ["14", "14"]
    lowrank = build_model(tmp_path / "lr" / "config.yaml")
    assert abs(count_parameters(lowrank) / count_parameters(dense_run["model"]) - 0.6) <= 0.01
    for name, layer in low_rank_layers(lowrank):
        block = int(name.split(".")[2])
        group = next(g for g, paths in budget.budgeted_parts(dense_run["model"])[name.split(".")[0]].groups.items()
                     if any(name.endswith(path) for path in paths))
        assert layer.rank not in _ranks_of(slower[f"{name.split('.')[0]}.{group}"][block])


def lowrank_settings_config(dense_run, units, ranks, tmp_path):
    values = read_config(dense_run["config"])
    num_blocks = {"encoder": len(dense_run["model"].encoder.encoders),
                  "decoder": len(dense_run["model"].decoder.decoders)}
    for part, settings in budget.lowrank_settings(units, ranks, 2, num_blocks).items():
        values[part] = {**values[part], **settings}
    values["encoder"], values["decoder"] = "lowrank_conformer", "lowrank_transformer"
    (tmp_path / "capped.yaml").write_text(yaml.safe_dump(values))
    return tmp_path / "capped.yaml"


def test_every_factorised_rank_stays_below_break_even(dense_run, tmp_path):
    units = budget.budget_units(dense_run["model"], dense_run["state"])
    for share in (0.5, 0.8):
        dense = sum(unit.dense_params for unit in units)
        ranks = budget.allocate(units, int(share * dense), multiple_of=2)
        config = lowrank_settings_config(dense_run, units, ranks, tmp_path)
        layers = low_rank_layers(build_model(config))
        for name, layer in layers:  # each layer, not only each group in sum
            assert layer.rank < break_even_rank(layer.in_features, layer.out_features), name
        assert layers and max(ranks.values()) > 2
    # money no object: every unit dense, and the config says so by leaving the groups out
    ranks = budget.allocate(units, 10**9, multiple_of=2)
    assert all(ranks[unit.name] == unit.full_rank for unit in units)
    assert not low_rank_layers(build_model(lowrank_settings_config(dense_run, units, ranks, tmp_path)))


@pytest.mark.parametrize("ratio", [0.6, 0.75, 0.9])
@pytest.mark.parametrize("allocator", ["energy", "equal_energy"])  # no_slower: with a fake clock, above
def test_the_converted_model_has_the_asked_share_of_parameters_within_1_percent(dense_run, tmp_path, ratio,
                                                                                 allocator):
    result = budgeted_config(dense_run["config"], dense_run["weights"], ratio, tmp_path / "lr" / "config.yaml",
                             multiple_of=2, allocator=allocator)
    lowrank = build_model(tmp_path / "lr" / "config.yaml")
    measured = count_parameters(lowrank)
    assert measured == result["params"]
    assert abs(measured / count_parameters(dense_run["model"]) - ratio) <= 0.01
    convert(dense_run["config"], dense_run["weights"], tmp_path / "lr" / "config.yaml", tmp_path / "lr" / "model.pth")
    lowrank.load_state_dict(torch.load(tmp_path / "lr" / "model.pth"), strict=True)


def test_excluded_groups_stay_dense(dense_run, tmp_path):
    budgeted_config(dense_run["config"], dense_run["weights"], 0.8, tmp_path / "c.yaml",
                    exclude=["encoder.convolution", "decoder.src_attention"], multiple_of=2)
    values = read_config(tmp_path / "c.yaml")
    assert values["encoder"] == "lowrank_conformer" and "lowrank_convolution" not in values["encoder_conf"]
    assert "lowrank_src_attention" not in values["decoder_conf"]
    assert low_rank_layers(build_model(tmp_path / "c.yaml"))  # the other groups are factorised


def test_an_excluded_block_stays_dense_and_the_report_reads_the_result(dense_run, tmp_path):
    """The example of "keep the first block dense": explicit mappings say null for it."""
    from espnet_lowrank.tools.report import format_report, report

    result = budgeted_config(dense_run["config"], dense_run["weights"], 0.8, tmp_path / "lr" / "config.yaml",
                             exclude=["encoder.encoders.0", "decoder.src_attention"], multiple_of=2)
    values = read_config(tmp_path / "lr" / "config.yaml")
    assert all(mapping["ratios"][0] is None and None not in mapping["ratios"][1:]
               for key, mapping in values["encoder_conf"].items() if key.startswith("lowrank_") and mapping)
    lowrank = build_model(tmp_path / "lr" / "config.yaml")
    assert count_parameters(lowrank) == result["params"]
    assert abs(result["params"] / count_parameters(dense_run["model"]) - 0.8) <= 0.01
    factorised = [name for name, _ in low_rank_layers(lowrank)]
    assert not [name for name in factorised if name.startswith("encoder.encoders.0.")]
    assert [name for name in factorised if name.startswith("encoder.encoders.1.")]
    convert(dense_run["config"], dense_run["weights"], tmp_path / "lr" / "config.yaml", tmp_path / "lr" / "model.pth")
    state = torch.load(tmp_path / "lr" / "model.pth")
    lowrank.load_state_dict(state, strict=True)
    name = "encoder.encoders.0.self_attn.linear_q.weight"  # copied as it was
    assert torch.equal(state[name], dense_run["state"][name])
    shown = report(tmp_path / "lr" / "config.yaml")
    assert shown["totals"]["params"] == result["params"]
    assert {row["block"] for row in shown["layers"] if row["part"] == "encoder"} == \
        set(range(1, len(dense_run["model"].encoder.encoders)))
    assert "encoder.encoders.1.self_attn.linear_q" in format_report(shown)


@pytest.mark.parametrize("kwargs,message", [
    ({"param_ratio": 0.05}, "ask for a larger --param_ratio"),
    ({"param_ratio": 1.0}, r"--param_ratio 1.0: .* in \(0, 1\)"),
    ({"param_ratio": 0.8, "exclude": ["encoder.attn"]}, "--exclude encoder.attn is neither a layer group"),
    ({"param_ratio": 0.8, "exclude": ["encoder.encoders.9"]}, r"nor a block \(encoder.encoders.0 ... "),
])
def test_bad_budgets_are_named(dense_run, tmp_path, kwargs, message):
    with pytest.raises(Exception, match=message):
        budgeted_config(dense_run["config"], dense_run["weights"], out_config=tmp_path / "c.yaml", **kwargs)


def test_a_low_rank_model_is_not_budgeted_again(dense_run, tmp_path):
    with pytest.raises(Exception, match="a budget converts a dense encoder: conformer"):
        budgeted_config(CONF / "tiny_lowrank.yaml", dense_run["weights"], 0.5, tmp_path / "c.yaml")


def _like_config(tmp_path) -> Path:
    """tiny_lowrank.yaml with one group left dense, one block kept dense and ranks in multiples of 2."""
    values = read_config(CONF / "tiny_lowrank.yaml")
    del values["decoder_conf"]["lowrank_src_attention"]
    values["encoder_conf"]["lowrank_convolution"] = {"mapping": "explicit", "ratios": [0.5, None]}
    values["encoder_conf"]["lowrank_attention"]["multiple_of"] = 2
    values["encoder_conf"]["lowrank_init"] = "svd"
    path = tmp_path / "like.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_a_budget_like_a_low_rank_config_keeps_its_groups_settings_and_hits_the_budget(dense_run, tmp_path, ratio):
    """What run.sh --lowrank_param_ratio does after a warm-up: the config says what is factorised."""
    like = _like_config(tmp_path)
    out = tmp_path / "lr" / "config.yaml"
    result = budgeted_config(dense_run["config"], dense_run["weights"], ratio, out, like=like)
    values = read_config(out)
    conf = values["encoder_conf"]
    assert conf["lowrank_input_layer"] == {"mapping": "constant", "ratio": 0.5}  # not budgeted: as it was
    assert conf["lowrank_init"] == "svd"
    assert "lowrank_src_attention" not in values["decoder_conf"]  # dense in the config, dense here
    if "lowrank_convolution" in conf:
        assert conf["lowrank_convolution"]["ratios"][1] is None  # the block the config keeps dense
    assert conf["lowrank_attention"]["mapping"] == "explicit" and conf["lowrank_attention"]["multiple_of"] == 2
    assert all(unit.group_name != "decoder.src_attention" for unit in result["units"])
    lowrank = build_model(out)
    assert count_parameters(lowrank) == result["params"]
    assert abs(result["params"] / count_parameters(dense_run["model"]) - ratio) <= 0.01
    assert not [name for name, _ in low_rank_layers(lowrank) if ".src_attn." in name]
    assert [name for name, _ in low_rank_layers(lowrank) if name.startswith("encoder.embed")]  # the subsampling
    convert(dense_run["config"], dense_run["weights"], out, tmp_path / "lr" / "model.pth")
    lowrank.load_state_dict(torch.load(tmp_path / "lr" / "model.pth"), strict=True)


@pytest.mark.parametrize("argv,message", [
    (["--param_ratio", "0.5", "--config", "LIKE", "--exclude", "encoder.convolution"],
     "--exclude: with --config .* the config says which layers stay dense"),
    ([], "say what to convert into: --config"),
    (["--param_ratio", "0.5", "--shape_files", "a", "b"],
     "--shape_files: the batch layers are timed at, for --allocator no_slower only \\(not energy\\)"),
])
def test_convert_refuses_options_that_contradict(dense_run, tmp_path, argv, message):
    from espnet_lowrank.tools.convert import main

    argv = [str(_like_config(tmp_path)) if arg == "LIKE" else arg for arg in argv]
    with pytest.raises(SystemExit, match=message):
        main(["--dense_config", str(dense_run["config"]), "--dense_model", str(dense_run["weights"]),
              "--out", str(tmp_path / "out.pth"), *argv])
    assert not (tmp_path / "out.pth").exists()


def test_an_e_branchformer_is_budgeted_in_its_own_groups(tmp_path):
    """The budget reads its groups from the architectures table: an E-Branchformer's cgMLP and merge
    projections are budgeted as the Conformer's groups are."""
    from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder

    from espnet_lowrank.conversion import convert_by_budget
    from espnet_lowrank.e_branchformer import LowRankEBranchformerEncoder
    from espnet_lowrank.model_config import dense_twin

    values = dense_twin(read_config(CONF / "tiny_lowrank_e_branchformer.yaml"))
    values["token_list"] = TOKENS
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    torch.manual_seed(0)
    dense = build_model(tmp_path / "config.yaml")
    assert type(dense.encoder) is EBranchformerEncoder
    torch.save(dense.state_dict(), tmp_path / "dense.pth")
    config, result, rows = convert_by_budget(tmp_path / "config.yaml", tmp_path / "dense.pth", 0.6,
                                             tmp_path / "lr" / "model.pth", multiple_of=2, allocator="equal_energy")
    assert {unit.group_name for unit in result["units"]} >= {"encoder.cgmlp", "encoder.merge", "decoder.feed_forward"}
    lowrank = build_model(config)
    assert isinstance(lowrank.encoder, LowRankEBranchformerEncoder)
    assert count_parameters(lowrank) == result["params"]
    assert abs(result["params"] / count_parameters(dense) - 0.6) <= 0.01
    lowrank.load_state_dict(torch.load(tmp_path / "lr" / "model.pth"), strict=True)
    assert {row["group"] for row in rows} >= {"encoder cgmlp", "encoder merge"}


def test_a_budget_conversion_reads_the_dense_run_once_and_builds_each_model_once(dense_run, tmp_path,
                                                                                  monkeypatch):
    from espnet_lowrank import conversion

    calls = {"read": [], "build": 0, "load": 0}
    read, build, load = conversion.read_config, conversion.build_model, conversion.load_weights

    def counting_read(config):
        calls["read"].append(config)
        return read(config)

    def counting_build(values, where):
        calls["build"] += 1
        return build(values, where=where)

    def counting_load(path):
        calls["load"] += 1
        return load(path)

    monkeypatch.setattr(conversion, "read_config", counting_read)
    monkeypatch.setattr(conversion, "build_model", counting_build)
    monkeypatch.setattr(conversion, "load_weights", counting_load)
    conversion.convert_by_budget(dense_run["config"], dense_run["weights"], 0.6, tmp_path / "lr" / "model.pth",
                                 multiple_of=2)
    assert calls == {"read": [dense_run["config"]], "build": 2, "load": 1}  # the dense model, then the low-rank one
