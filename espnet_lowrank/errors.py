"""Expected failures (bad input, a missing file, a bad option) end a command
with one line; only real bugs print a traceback.

Every command-line entry point wraps its ``main`` in :func:`one_line_errors`.
``ESPNET_LOWRANK_VERBOSE=1`` (run.sh ``--verbose true``) brings tracebacks
back for everything, for those debugging the project itself.
"""

import functools
import os
import sys

#: What bad input raises in this project: each message names the offending
#: option, key, file or value. Anything else is a bug and keeps its traceback.
EXPECTED = (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError)


class InputError(Exception):
    """Bad input to a stage or tool; the message names the stage, file,
    option or utterance it is about."""


def one_line_errors(main):
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (InputError, *EXPECTED) as error:
            if os.environ.get("ESPNET_LOWRANK_VERBOSE", "") not in ("", "0", "false"):
                raise
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            sys.exit(f"ERROR: {message}")

    return wrapper
