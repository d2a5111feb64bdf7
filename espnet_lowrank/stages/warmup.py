"""Stage 11 with ``--lowrank_warmup_epochs E`` (Pufferfish's dense warm-up):
train the config's dense twin for E epochs, factorise its trained weights
(``espnet-lowrank convert``), then train the low-rank model for the rest of
``max_epoch`` from there, with a fresh optimiser and learning-rate warm-up.

    python -m espnet_lowrank.stages.warmup dense-config --config C.yaml --out dense.yaml
    python -m espnet_lowrank.stages.warmup epochs --config C.yaml --warmup_epochs E --asr_args "..."

``epochs`` prints how many epochs the low-rank phase trains: ``max_epoch``
(the last ``--max_epoch`` in ``--asr_args``, else the config's, else
ESPnet's default) minus E; 0 for a dense config, which has nothing to
factorise and trains as it is (so a recipe can default to a warm-up and
still train its dense baseline).
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.model_config import DENSE_TWINS, dense_twin, read_config, uses_low_rank
from espnet_lowrank.stages import StageError
from espnet_lowrank.stages.train_options import max_epoch


def write_dense_config(config: Path, out: Path) -> None:
    values = read_config(config)
    if not uses_low_rank(values):
        raise StageError(
            f"stage 11: --lowrank_warmup_epochs needs a low-rank model, but {config} uses neither "
            f"{' nor '.join(DENSE_TWINS)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    partial.write_text(
        f"# The dense twin of {config} (its low-rank settings off), trained for the warm-up.\n"
        + yaml.safe_dump(dense_twin(values), sort_keys=False)
    )
    partial.replace(out)


def lowrank_epochs(config: Path, warmup_epochs: int, asr_args: str) -> int:
    if not uses_low_rank(read_config(config)):
        print(f"stage 11: {config} is dense: --lowrank_warmup_epochs {warmup_epochs} has nothing to "
              "factorise, so it trains as it is", file=sys.stderr)
        return 0
    total = max_epoch(config, asr_args)
    if not 1 <= warmup_epochs < total:
        raise StageError(
            f"stage 11: --lowrank_warmup_epochs {warmup_epochs} must be at least 1 and less than "
            f"max_epoch ({total}), which counts the warm-up and the low-rank epochs together"
        )
    return total - warmup_epochs


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    twin = commands.add_parser("dense-config", help="write the config's dense twin")
    twin.add_argument("--config", type=Path, required=True)
    twin.add_argument("--out", type=Path, required=True)
    epochs = commands.add_parser("epochs", help="print the low-rank phase's epochs")
    epochs.add_argument("--config", type=Path, required=True)
    epochs.add_argument("--warmup_epochs", type=int, required=True)
    epochs.add_argument("--asr_args", default="")
    args = parser.parse_args(argv)
    if args.command == "dense-config":
        write_dense_config(args.config, args.out)
    else:
        print(lowrank_epochs(args.config, args.warmup_epochs, args.asr_args))


if __name__ == "__main__":
    main()
