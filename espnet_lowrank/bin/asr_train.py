"""``python -m espnet_lowrank.bin.asr_train``: ESPnet's ``asr_train`` with the
low-rank classes registered and crash-safe checkpoints
(:mod:`espnet_lowrank.checkpoints`); every option is ESPnet's own."""

import os
import sys
from pathlib import Path
from typing import Sequence

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)
from espnet2.bin.asr_train import main

from espnet_lowrank.checkpoints import install_atomic_save, recover_checkpoint
from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.stages.train_options import command_line_value

install_atomic_save()  # at import, so the processes ESPnet spawns for DDP save atomically too


@one_line_errors
def prepare_resume(argv: Sequence[str]) -> None:
    resuming = (command_line_value(argv, "resume") or "").lower() == "true"
    collecting = (command_line_value(argv, "collect_stats") or "").lower() == "true"
    output_dir = command_line_value(argv, "output_dir")
    one_of_many = int(os.environ.get("WORLD_SIZE", "1")) > 1  # the launcher recovered it once for all ranks
    if resuming and not collecting and output_dir and not one_of_many:
        recover_checkpoint(Path(output_dir))


if __name__ == "__main__":
    prepare_resume(sys.argv[1:])
    main()
