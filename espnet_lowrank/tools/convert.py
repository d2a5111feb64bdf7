"""Factorise a trained dense model into a low-rank one: ``espnet-lowrank convert``.

    espnet-lowrank convert --dense_config exp/dense/config.yaml --dense_model exp/dense/5epoch.pth \\
        --config conf/train_asr_lrsms_demo.yaml --out exp/lrsms_init.pth

The low-rank model is the one ``--config`` describes (ranks from its
mappings), or, with ``--param_ratio R``, the dense model's own config
with ranks chosen to reach R times its parameters while keeping as much of
each weight's spectral energy as possible (:mod:`espnet_lowrank.budget`;
written to ``--out_config``, with the ranks printed per group and block);
given both, the budget factorises what ``--config`` factorises, keeping its
other settings (what ``run.sh --lowrank_param_ratio`` does after a warm-up):

    espnet-lowrank convert --dense_config exp/dense/config.yaml --dense_model exp/dense/valid.acc.ave.pth \\
        --param_ratio 0.5 --exclude encoder.convolution encoder.encoders.0 --out exp/half/model.pth

Options the low-rank YAML leaves out (token list, feature
normalisation, ...) come from the dense run's saved ``config.yaml``, as they
do when run.sh trains both on the same data. Every factor pair is the
truncated SVD of its trained dense weight, U = u·√s, V = √s·vᵀ (exact at full
rank); every other weight is copied. The output is a state dict for ESPnet's
``--init_param`` (training on from it with a fresh optimiser) or for
``Speech2Text`` with ``--config``. Written atomically; prints, per layer group,
the share of each dense weight's energy (Σs² of the kept singular values) the
factors keep.
"""

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import yaml

from espnet_lowrank import budget, layer_speed, packing
from espnet_lowrank.tools.command import command_main
from espnet_lowrank.errors import InputError
from espnet_lowrank.layers import FactorPair
from espnet_lowrank.model_files import load_weights
from espnet_lowrank.model_config import build_model, count_parameters, read_config, training_options
from espnet_lowrank.surgery import factorize_state_dict


def lowrank_options(dense_config, config) -> dict:
    """The low-rank YAML's options over the dense run's saved ones."""
    values = read_config(dense_config)
    values.update(read_config(config))
    return values


def energy_kept(dense_state: Dict[str, torch.Tensor], model) -> List[Dict]:
    """Per low-rank layer: its group, rank and Σ of the kept singular values²
    / Σ of all of them."""
    from espnet_lowrank.tools.report import layer_rows

    rows = []
    for row in layer_rows(model):
        layer = model.get_submodule(row.module)
        matrix = layer.weight_as_matrix(dense_state[f"{row.module}.weight"]).double()
        squares = torch.linalg.svdvals(matrix).square()
        rows.append({"module": row.module, "group": f"{row.part} {row.group}", "rank": row.rank,
                     "energy": (squares[: row.rank].sum() / squares.sum()).item()})
    return rows


def convert(dense_config, dense_model, config, out) -> List[Dict]:
    """Write the converted state dict to ``out``; returns :func:`energy_kept`."""
    dense_state = load_weights(dense_model)
    model = _build(lowrank_options(dense_config, config))
    state = factorize_state_dict(model, dense_state)
    model.load_state_dict(state, strict=True)  # the layout Speech2Text and --init_param will see
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(state, partial)
    partial.replace(out)
    return energy_kept(dense_state, model)


#: What a budget converts (the groups of :mod:`espnet_lowrank.budget`): part -> (dense, low-rank) choice names
BUDGET_TWINS = {"encoder": ("conformer", "lowrank_conformer"), "decoder": ("transformer", "lowrank_transformer")}


def budgeted_config(dense_config, dense_model, param_ratio: float, out_config, exclude=(),
                    multiple_of: int = 8, like=None, allocator: str = "energy",
                    timing: Optional["Timing"] = None) -> Dict:
    """Write the low-rank config whose ranks spend ``param_ratio`` of the dense model's parameters
    (:mod:`espnet_lowrank.budget`); returns the ranks and the parameter counts (and, with the
    ``no_slower`` allocator, the ranks at which each unit trained slower than dense: ``timing`` says
    where and on which batch it is measured).

    With ``like`` (a low-rank training YAML), the budget factorises only the layers that config
    factorises, with its groups' ``multiple_of``, and keeps its other settings (initialisation,
    subsampling, ...): its mappings are replaced by the chosen explicit ones. Without it, every group
    but ``exclude`` is budgeted, in multiples of ``multiple_of``."""
    if not 0 < param_ratio < 1:
        raise InputError(f"--param_ratio {param_ratio}: the low-rank model's size relative to the dense one, in (0, 1)")
    dense_values = read_config(dense_config)  # the run's own: its batch and precision are the ones timed
    for part, (parent, ours) in BUDGET_TWINS.items():
        if dense_values.get(part) != parent:
            raise InputError(f"{dense_config}: {part}: {dense_values.get(part)!r}; a budget converts a dense "
                             f"{part}: {parent} (into {ours})")
    values = dict(dense_values)
    model = build_model(dense_config)
    state = load_weights(dense_model)
    units = budget.budget_units(model, state, exclude)
    dense_params = count_parameters(model)
    if like is None:
        shaped = model  # every budgeted layer is dense there
    else:
        values = lowrank_options(dense_config, like)
        shaped = _build(values)
        units = [unit for unit in units
                 if all(isinstance(shaped.get_submodule(module), FactorPair) for module in unit.modules)]
        multiple_of = {unit.group_name: _mapping(values, unit).get("multiple_of", 1) for unit in units}
        for unit in units:  # its mappings give way to the explicit ones below
            values[f"{unit.part}_conf"].pop(f"lowrank_{unit.group}", None)
    if not units:
        groups = [f"{part}.{group}" for part, part_groups in budget._groups().items() for group in part_groups]
        raise InputError(f"{like}: factorises none of the layers a budget chooses ranks for ({', '.join(groups)})")
    fixed = budget.fixed_params(shaped, units)
    target = round(param_ratio * dense_params)
    slower = None
    if allocator == "no_slower":
        timing = timing or Timing()
        shapes = layer_speed.recipe_inputs(model, dense_values, [m for unit in units for m in unit.modules],
                                           timing.shape_files)
        slower = layer_speed.slower_ranks(model, units, shapes, multiple_of, timing.probe(dense_values))
    ranks = budget.allocate(units, target - fixed, multiple_of, allocator, slower)
    num_blocks = {"encoder": len(model.encoder.encoders), "decoder": len(model.decoder.decoders)}
    for part, settings in budget.lowrank_settings(units, ranks, multiple_of, num_blocks).items():
        values[part] = {**values[part], **settings}
    for part, (_, ours) in BUDGET_TWINS.items():
        values[part] = ours
    values.pop("config", None)  # it was the dense run's YAML
    values = training_options(values)  # so that run.sh --init_param can train on from it
    out_config = Path(out_config)
    out_config.parent.mkdir(parents=True, exist_ok=True)
    partial = out_config.with_name(f".{out_config.name}.{os.getpid()}.tmp")
    partial.write_text(yaml.safe_dump(values, sort_keys=False))
    partial.replace(out_config)
    return {"ranks": ranks, "units": units, "dense_params": dense_params, "target_params": target,
            "params": fixed + budget.factorised_params(units, ranks), "slower": slower,
            "steps": {unit.name: budget.step_of(multiple_of, unit) for unit in units}}


@dataclass(frozen=True)
class Timing:
    """Where the ``no_slower`` budget times its layers: the recipe's shape files (empty: uniform 12 s
    utterances) and the device training uses."""

    shape_files: Tuple[str, ...] = ()
    device: str = "cuda" if torch.cuda.is_available() else "cpu"

    def probe(self, config: Dict) -> layer_speed.Probe:
        return layer_speed.Probe(self.device, amp=bool(config.get("use_amp")))


def _build(values: Dict):
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(values))
        return build_model(config)


def _mapping(values: Dict, unit) -> Dict:
    mapping = values[f"{unit.part}_conf"].get(f"lowrank_{unit.group}")
    return mapping if isinstance(mapping, dict) else {}


def format_ranks(result: Dict) -> str:
    lines = [f"{'group':28} ranks by block (energy kept)"]
    by_group: Dict[str, List[str]] = {}
    for unit in result["units"]:
        rank = result["ranks"][unit.name]
        shown = "dense" if rank == unit.full_rank else f"{rank} ({unit.energy[rank]:.2f})"
        by_group.setdefault(f"{unit.part}.{unit.group}", []).append(shown)
    lines += [f"{group:28} {' '.join(ranks)}" for group, ranks in by_group.items()]
    if result.get("slower") is not None:
        slower: Dict[str, List[str]] = {}
        for unit in result["units"]:
            spans = _spans(result["slower"][unit.name], result["steps"][unit.name])
            slower.setdefault(unit.group_name, []).append(spans or "-")
        lines.append("trains slower than dense at ranks (by block; -: at none below break-even):")
        lines += [f"{group:28} {' '.join(ranks)}" for group, ranks in slower.items()]
    lines.append(f"parameters: {result['params']:,} = {result['params'] / result['dense_params']:.3f} of the dense "
                 f"{result['dense_params']:,} (asked: {result['target_params'] / result['dense_params']:.3f})")
    return "\n".join(lines)


def _spans(ranks, step: int) -> str:
    """``8,16,24,104`` as ``8-24,104`` (``step`` 8): runs of consecutive ranks as spans."""
    spans: List[List[int]] = []
    for rank in sorted(ranks):
        if spans and rank - spans[-1][1] == step:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def format_energy(rows: List[Dict]) -> str:
    groups: Dict[str, List[float]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row["energy"])
    lines = [f"{'group':28} {'layers':>6} {'energy kept: median':>20} {'min':>6}"]
    for group, shares in groups.items():
        lines.append(f"{group:28} {len(shares):>6} {statistics.median(shares):>20.3f} {min(shares):>6.3f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dense_config", help="the dense run's saved config.yaml (not with a pack)")
    parser.add_argument("--dense_model", required=True,
                        help="its weights, e.g. 5epoch.pth, or a packed asr_model.zip (config included)")
    parser.add_argument("--config", help="the low-rank training YAML (ranks, groups); with --param_ratio: its "
                        "groups and settings, ranks chosen by the budget")
    parser.add_argument("--param_ratio", type=float, help="ranks for this share of the dense parameters")
    parser.add_argument("--exclude", nargs="*", default=[], help="with --param_ratio: groups or blocks kept dense, "
                        "e.g. encoder.convolution decoder.src_attention encoder.encoders.0")
    parser.add_argument("--multiple_of", type=int, default=8, help="with --param_ratio: ranks are multiples of it")
    parser.add_argument("--allocator", choices=budget.ALLOCATORS, default="energy",
                        help="with --param_ratio: energy (most spectral energy in all), equal_energy (the same "
                        "share of each layer group's energy first, then the rest as energy does) or no_slower "
                        "(energy, over the ranks that train no slower than dense: each layer timed at the "
                        "recipe's batch)")
    parser.add_argument("--shape_files", nargs=2, default=(), metavar=("SPEECH_SHAPE", "TEXT_SHAPE"),
                        help="with --allocator no_slower: the recipe's exp/asr_stats_*/train/speech_shape and "
                        "text_shape.<token_type>, whose batch (as the dense config's sampler makes it) the layers are "
                        "timed at (default: uniform 12 s utterances)")
    parser.add_argument("--time_device", choices=["cpu", "cuda"], default=Timing.device,
                        help="with --allocator no_slower: where the layers are timed (the training device)")
    parser.add_argument("--out_config", help="with --param_ratio: where the low-rank config goes "
                        "(default: beside --out, as config.yaml)")
    parser.add_argument("--out", required=True, help="where to write the low-rank state dict")
    parser.add_argument("--pack", help="also pack the low-rank model into this asr_model.zip")


def convert_by_budget(dense_config, dense_model, param_ratio: float, out, exclude=(), multiple_of: int = 8,
                      out_config=None, like=None, allocator: str = "energy", timing: Optional[Timing] = None):
    """``--param_ratio``: write the budgeted low-rank config (``out_config``, by default ``config.yaml``
    beside ``out``) and the dense weights converted into it; returns the config's path,
    :func:`budgeted_config`'s result and :func:`convert`'s rows."""
    config = Path(out_config) if out_config else Path(out).with_name("config.yaml")
    result = budgeted_config(dense_config, dense_model, param_ratio, config, exclude, multiple_of, like, allocator,
                             timing)
    return config, result, convert(dense_config, dense_model, config, out)


def run(args: argparse.Namespace) -> None:
    dense_config, dense_model = args.dense_config, args.dense_model
    if str(dense_model).endswith(".zip"):
        if dense_config:
            raise InputError(f"--dense_model {dense_model} is a pack with its own config: leave out --dense_config")
        dense_config, dense_model = packing.unpack_model(dense_model, Path(args.out).parent / "dense_pack")
    elif not dense_config:
        raise InputError("--dense_config is needed, unless --dense_model is a packed asr_model.zip")
    if args.config is None and args.param_ratio is None:
        raise InputError("say what to convert into: --config (its ranks), --param_ratio (ranks by budget), or both")
    if args.shape_files and args.allocator != "no_slower":
        raise InputError(f"--shape_files: the batch layers are timed at, for --allocator no_slower only "
                         f"(not {args.allocator})")
    if args.param_ratio is not None:
        if args.config and args.exclude:
            raise InputError(f"--exclude: with --config {args.config} the config says which layers stay dense")
        config, result, rows = convert_by_budget(dense_config, dense_model, args.param_ratio, args.out, args.exclude,
                                                 args.multiple_of, args.out_config, like=args.config,
                                                 allocator=args.allocator,
                                                 timing=Timing(tuple(args.shape_files), args.time_device))
        print(f"wrote {config}\n{format_ranks(result)}")
    else:
        config, rows = args.config, convert(dense_config, dense_model, args.config, args.out)
    print(f"wrote {args.out}: {len(rows)} factorised layers\n{format_energy(rows)}")
    if args.pack:
        print(f"packed {packing.pack_model(lowrank_options(dense_config, config), args.out, args.pack)}")


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
