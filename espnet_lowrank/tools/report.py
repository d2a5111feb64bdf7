"""Parameter counts of ESPnet ASR configs, as ESPnet builds them.

    python -m espnet_lowrank.tools.report conf/tuning/*.yaml --vocab 5000

prints a Markdown table (total, encoder, decoder, CTC, and the ratio to the
first config), the table in docs/configs.md.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from espnet_lowrank.model_config import build_model, count_parameters


def parameter_summary(config, vocab_size: Optional[int] = None) -> Dict[str, int]:
    """Parameters of the model ESPnet builds from ``config``, total and per part."""
    model = build_model(config, vocab_size=vocab_size)
    summary = {"total": count_parameters(model)}
    for part in ("encoder", "decoder", "ctc"):
        module = getattr(model, part, None)
        summary[part] = count_parameters(module) if module is not None else 0
    return summary


def markdown_table(configs: Sequence[str], vocab_size: Optional[int]) -> str:
    rows: List[str] = [
        "| config | total (M) | encoder (M) | decoder (M) | CTC (M) | fewer than first |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    first_total = None
    for config in configs:
        counts = parameter_summary(config, vocab_size)
        first_total = first_total or counts["total"]
        rows.append(
            f"| `{Path(config).name}` | {counts['total'] / 1e6:.2f} | "
            f"{counts['encoder'] / 1e6:.2f} | {counts['decoder'] / 1e6:.2f} | "
            f"{counts['ctc'] / 1e6:.2f} | {first_total / counts['total']:.2f}× |"
        )
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="ESPnet ASR training YAMLs")
    parser.add_argument(
        "--vocab", type=int, default=None,
        help="vocabulary size (default: the config's token_list)",
    )
    args = parser.parse_args(argv)
    print(markdown_table(args.configs, args.vocab))


if __name__ == "__main__":
    main(sys.argv[1:])
