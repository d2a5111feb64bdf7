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
import statistics
from pathlib import Path
from typing import Dict, List

from espnet_lowrank import budget, packing
from espnet_lowrank.conversion import convert, convert_by_budget, lowrank_options
from espnet_lowrank.errors import InputError
from espnet_lowrank.layer_speed import Timing
from espnet_lowrank.tools.command import command_main


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
