"""The value an ``asr_train`` option takes in a run.sh training: the last one
on the command line (``--asr_args``), else the config's, else ESPnet's
default; and the checks a multi-process training needs before it starts."""

import shlex
from pathlib import Path
from typing import Any

from espnet_lowrank.command_line import command_line_value
from espnet_lowrank.model_config import read_config
from espnet_lowrank.stages import StageError

#: ESPnet batch types whose every batch holds ``batch_size`` utterances (the
#: last may hold fewer), split rank by rank.
COUNTED_BATCHES = ("unsorted", "sorted")


def train_option(config: Path, asr_args: str, name: str) -> Any:
    value = command_line_value(shlex.split(asr_args), name)
    if value is None:
        value = read_config(config).get(name)
    if value is None:
        from espnet_lowrank.model_config import asr_task

        value = asr_task().get_parser().get_default(name)
    return value


def max_epoch(config: Path, asr_args: str) -> int:
    """The total epochs a run.sh training of ``config`` with ``asr_args`` runs."""
    value = train_option(config, asr_args, "max_epoch")
    try:
        return int(value)
    except ValueError:
        raise StageError(f"stage 11: max_epoch={value!r} is not a whole number of epochs") from None


def check_distributed(config: Path, asr_args: str, world_size: int) -> None:
    """Refuse, before anything starts, a batch of utterances that does not
    split evenly across ``world_size`` training processes (ESPnet gives each
    rank every ``world_size``-th utterance of each batch, so uneven batches
    weigh the ranks unequally)."""
    batch_type = train_option(config, asr_args, "batch_type")
    batch_size = int(train_option(config, asr_args, "batch_size"))
    if batch_type in COUNTED_BATCHES and batch_size % world_size:
        raise StageError(
            f"stage 11: batch_size {batch_size} (batch_type {batch_type}) does not split evenly across "
            f"{world_size} training processes; use a multiple of {world_size}"
        )
