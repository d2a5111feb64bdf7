"""Stage 10: feature statistics (ESPnet's ``asr_train --collect_stats true``) of the training set,
and the text shape files stage 11's batching reads (ESPnet's asr.sh makes them with awk)."""

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.stages import StageError
from espnet_lowrank.stages.asr_inputs import AsrInputs


def collect_stats(inputs: AsrInputs, config: Path, stats_dir: Path, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "espnet_lowrank.bin.asr_train", "--collect_stats", "true",
               "--config", str(config), "--ngpu", "0", *inputs.options(),
               "--train_shape_file", f"{inputs.train_dir}/utt2num_samples",
               "--valid_shape_file", f"{inputs.valid_dir}/utt2num_samples", "--output_dir", str(stats_dir)]
    with log.open("w") as output:
        if subprocess.run(command, stdout=output, stderr=subprocess.STDOUT).returncode:
            raise StageError(f"stage 10 failed: see {log}")
    vocabulary = len(inputs.token_list.read_text(encoding="utf-8").splitlines())
    for part in ("train", "valid"):
        shapes = (stats_dir / part / "text_shape").read_text(encoding="utf-8").splitlines()
        (stats_dir / part / f"text_shape.{inputs.token_type}").write_text(
            "".join(f"{line},{vocabulary}\n" for line in shapes), encoding="utf-8")


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    AsrInputs.add_arguments(parser)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--stats_dir", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)
    collect_stats(AsrInputs.from_args(args), args.config, args.stats_dir, args.log)


if __name__ == "__main__":
    main()
