"""A user's mistake (bad input, a missing file, a bad option or value) is an
:class:`InputError` and ends a command with one line; anything else is a bug
and keeps its traceback, whatever its type.

Every command-line entry point wraps its ``main`` in :func:`one_line_errors`.
``ESPNET_LOWRANK_VERBOSE=1`` (run.sh ``--verbose true``) brings tracebacks
back for everything, for those debugging the project itself.
"""

import contextlib
import errno
import functools
import os
import signal
import sys

#: A full disk or an exhausted quota: not a bug, and the same command goes on once space is freed.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


#: What to do about a full disk, in every stage's message.
FREE_SPACE = "free space there and run the same command again"


def disk_full_message(error: OSError) -> str:
    where = f" writing {error.filename}" if error.filename else ""
    return f"{error.strerror or os.strerror(error.errno)}{where}: {FREE_SPACE} (finished work is kept)"


@contextlib.contextmanager
def writing_into(directory):
    """Names ``directory`` in a full-disk error that does not say which file it was writing (a failed
    write or close, unlike a failed open, carries no file name); and when the disk there is (nearly)
    full, whatever the block died of is told as the full disk it most likely is (a writer that meets
    ENOSPC may fail with an error of its own first, such as a PNG encoder's ``AttributeError``)."""
    try:
        yield
    except OSError as error:
        if error.errno in DISK_FULL and not error.filename:
            raise OSError(error.errno, os.strerror(error.errno), str(directory)) from error
        if error.errno not in DISK_FULL and _full(directory):
            raise disk_full_in(directory, error) from error
        raise
    except Exception as error:
        if _full(directory):
            raise disk_full_in(directory, error) from error
        raise


def disk_full_in(directory, error: BaseException) -> OSError:
    """The full-disk error for ``directory``, saying what the work died of there."""
    return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (it died of {type(error).__name__}: {error})",
                   str(directory))


def _full(directory) -> bool:
    try:
        return nearly_full(directory)
    except OSError:  # gone, or never made: nothing to say about its disk
        return False


def nearly_full(directory) -> bool:
    """Whether the file system holding ``directory`` has under 1 MiB left: where a process that died
    writing there could not even log why."""
    status = os.statvfs(directory)
    return status.f_bavail * status.f_frsize < (1 << 20)


class InputError(ValueError):
    """A user's mistake: bad input to a stage, tool or model option, or a file the user named that is
    missing; the message names the stage, file, option, value or utterance it is about. (A ValueError, as
    what a caller passed is wrong; a ValueError of any other kind is a bug.)"""


def leave_ctrl_c_to_the_parent() -> None:
    """A pool worker's initializer: Ctrl-C reaches the whole process group, and a worker that dies of it
    mid-task leaves its pool waiting for that task for ever; the parent ends the pool instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def verbose() -> bool:
    return os.environ.get("ESPNET_LOWRANK_VERBOSE", "") not in ("", "0", "false")


def one_line_errors(main):
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as error:
            if verbose():
                raise
            sys.exit(f"ERROR: {error}")
        except OSError as error:
            if error.errno not in DISK_FULL or verbose():
                raise
            sys.exit(f"ERROR: {disk_full_message(error)}")

    return wrapper
