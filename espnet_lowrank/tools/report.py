"""What low rank buys, per layer: ``espnet-lowrank report CONFIG.yaml``.

    espnet-lowrank report conf/tuning/train_asr_lrsms.yaml --vocab 5000 --plot ranks.png
    espnet-lowrank report conf/tuning/*.yaml --vocab 5000 --summary   # the table in docs/configs.md

Builds the model ESPnet builds from the config (vocabulary from its token list,
or ``--vocab``) and prints every low-rank layer (module, shape, rank, ratio,
parameters, multiply-adds per frame or token) with totals against the same
model with every low-rank layer dense. ``--json`` prints the same for machines.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from espnet_lowrank.tools.command import command_main
from espnet_lowrank.errors import InputError
from espnet_lowrank.inventory import INPUT_LAYER_BLOCK, layer_rows
from espnet_lowrank.model_config import build_model, count_parameters

def report(config, vocab_size: Optional[int] = None) -> Dict:
    """Per-layer rows and totals for ``config``; ``dense`` totals are the same
    model with every low-rank layer dense."""
    model = build_model(config, vocab_size=vocab_size)
    rows = layer_rows(model)
    total = count_parameters(model)
    saved = sum(r.dense_params - r.params for r in rows)
    totals = {"params": total, "dense_params": total + saved}
    for part in ("encoder", "decoder"):
        module = getattr(model, part, None)
        part_params = count_parameters(module) if module is not None else 0
        part_rows = [r for r in rows if r.part == part]
        totals[f"{part}_params"] = part_params
        totals[f"{part}_dense_params"] = part_params + sum(r.dense_params - r.params for r in part_rows)
        # per frame or token: a subsampling convolution runs per output pixel instead
        block_rows = [r for r in part_rows if r.block != INPUT_LAYER_BLOCK]
        totals[f"{part}_lowrank_macs_per_position"] = sum(r.macs for r in block_rows)
        totals[f"{part}_lowrank_dense_macs_per_position"] = sum(r.dense_macs for r in block_rows)
    totals["ctc_params"] = count_parameters(model.ctc) if getattr(model, "ctc", None) is not None else 0
    return {"config": str(config), "layers": [asdict(r) for r in rows], "totals": totals}


def format_report(result: Dict) -> str:
    lines = [f"{result['config']}", ""]
    header = f"{'module':48} {'shape':>11} {'rank':>5} {'ratio':>6} {'params':>9} {'dense':>9} {'MACs/pos':>9}"
    lines += [header, "-" * len(header)]
    for r in result["layers"]:
        lines.append(
            f"{r['module']:48} {r['d_out']:>5}x{r['d_in']:<5} {r['rank']:>5} {r['ratio']:>6.3f} "
            f"{r['params']:>9,} {r['dense_params']:>9,} {r['macs']:>9,}"
        )
    t = result["totals"]
    lines += ["", f"{'':20} {'low rank':>14} {'dense twin':>14} {'ratio':>7}"]
    for label, ours, dense in (
        ("total parameters", t["params"], t["dense_params"]),
        ("encoder parameters", t["encoder_params"], t["encoder_dense_params"]),
        ("decoder parameters", t["decoder_params"], t["decoder_dense_params"]),
        ("encoder MACs/frame*", t["encoder_lowrank_macs_per_position"], t["encoder_lowrank_dense_macs_per_position"]),
        ("decoder MACs/token*", t["decoder_lowrank_macs_per_position"], t["decoder_lowrank_dense_macs_per_position"]),
    ):
        lines.append(f"{label:20} {ours:>14,} {dense:>14,} {dense / max(ours, 1):>6.2f}×")
    lines.append("* of the factorised layers in encoder/decoder blocks only, per encoder frame (after "
                 "subsampling) or decoder token; a subsampling (embed) row's MACs/pos is per output pixel")
    return "\n".join(lines)


def plot_ranks(result: Dict, path: Path) -> None:
    """Rank ratio per block for each group, encoder and decoder side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("encoder", "decoder") if any(r["part"] == p for r in result["layers"])]
    if not parts:
        raise InputError(f"{result['config']} has no low-rank layers to plot")
    figure, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4), squeeze=False)
    for axis, part in zip(axes[0], parts):
        rows = [r for r in result["layers"] if r["part"] == part]
        groups = list(dict.fromkeys(r["group"] for r in rows))
        for index, group in enumerate(groups):
            by_block: Dict[int, List[float]] = {}
            for r in rows:
                if r["group"] == group:
                    by_block.setdefault(r["block"], []).append(r["ratio"])
            blocks = sorted(by_block)
            # distinct markers and dashes: groups often share a mapping and overlap
            axis.plot([b + 1 for b in blocks], [max(by_block[b]) for b in blocks], label=group,
                      marker="osD^v"[index % 5], linestyle=("-", "--", ":")[index % 3],
                      markersize=9 - 2 * index, linewidth=2)
        first_block = min(r["block"] for r in rows) + 1
        last_block = max(r["block"] for r in rows) + 1
        ticks = list(range(first_block, last_block + 1))
        axis.set(title=f"{part}: rank / min(d_in, d_out)", xlabel="block", ylabel="rank ratio",
                 ylim=(0, 1.05), xticks=ticks,
                 xticklabels=["subsampling" if t == INPUT_LAYER_BLOCK + 1 else str(t) for t in ticks])
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(Path(result["config"]).name)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summary_table(configs: Sequence[str], vocab_size: Optional[int]) -> str:
    """One Markdown row per config: parameters against the first config."""
    rows = [
        "| config | total (M) | encoder (M) | decoder (M) | CTC (M) | fewer than first |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    first = None
    for config in configs:
        t = report(config, vocab_size)["totals"]
        first = first or t["params"]
        rows.append(
            f"| `{Path(config).name}` | {t['params'] / 1e6:.2f} | {t['encoder_params'] / 1e6:.2f} | "
            f"{t['decoder_params'] / 1e6:.2f} | {t['ctc_params'] / 1e6:.2f} | {first / t['params']:.2f}× |"
        )
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", help="ESPnet ASR training YAMLs")
    parser.add_argument("--vocab", type=int, default=None,
                        help="vocabulary size (default: the config's token_list)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--plot", type=Path, default=None,
                        help="write a PNG of rank ratio per block (one config)")
    parser.add_argument("--summary", action="store_true",
                        help="one Markdown row of parameter counts per config")


def run(args: argparse.Namespace) -> None:
    if args.summary:
        print(summary_table(args.configs, args.vocab))
        return
    results = [report(config, args.vocab) for config in args.configs]
    if args.plot is not None:
        if len(results) != 1:
            raise SystemExit("--plot takes one config")
        plot_ranks(results[0], args.plot)
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=1))
    else:
        print("\n\n".join(format_report(r) for r in results))


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
