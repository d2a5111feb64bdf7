"""One module per run.sh stage; run.sh calls each as ``python -m espnet_lowrank.stages.<name>``.

Every stage raises :class:`StageError` for bad input, with the stage, the file
and the utterance or option it is about, and writes its outputs atomically.
"""

import datetime
import sys

from espnet_lowrank.errors import InputError


class StageError(InputError):
    """Bad input to a stage; the message names the stage, file and utterance."""


def log(message: str) -> None:
    """A line on the console in run.sh's own form (its time, then ``run.sh:``)."""
    print(f"[{datetime.datetime.now():%Y-%m-%d %H:%M:%S}] run.sh: {message}", file=sys.stderr, flush=True)
