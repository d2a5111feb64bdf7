"""``python -m espnet_lowrank.bin.asr_train``: ESPnet's ``asr_train`` with the
low-rank classes registered and crash-safe checkpoints
(:mod:`espnet_lowrank.checkpoints`); every option is ESPnet's own."""

import sys
from pathlib import Path
from typing import Optional, Sequence

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)
from espnet2.bin.asr_train import main

from espnet_lowrank.checkpoints import install_atomic_save, recover_checkpoint
from espnet_lowrank.errors import one_line_errors

install_atomic_save()  # at import, so the processes ESPnet spawns for DDP save atomically too


def option(argv: Sequence[str], name: str) -> Optional[str]:
    """The last value of ``--name value`` / ``--name=value`` on the command line."""
    value = None
    for index, word in enumerate(argv):
        if word == f"--{name}" and index + 1 < len(argv):
            value = argv[index + 1]
        elif word.startswith(f"--{name}="):
            value = word.split("=", 1)[1]
    return value


@one_line_errors
def prepare_resume(argv: Sequence[str]) -> None:
    resuming = (option(argv, "resume") or "").lower() == "true"
    collecting = (option(argv, "collect_stats") or "").lower() == "true"
    output_dir = option(argv, "output_dir")
    if resuming and not collecting and output_dir:
        recover_checkpoint(Path(output_dir))


if __name__ == "__main__":
    prepare_resume(sys.argv[1:])
    main()
