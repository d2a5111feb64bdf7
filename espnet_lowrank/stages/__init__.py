"""One module per run.sh stage; each has a ``main()`` that run.sh calls.

Every stage raises :class:`StageError` for bad input, with the stage, the file
and the utterance or option it is about, and writes its outputs atomically.
"""

from espnet_lowrank.errors import InputError


class StageError(InputError):
    """Bad input to a stage; the message names the stage, file and utterance."""
