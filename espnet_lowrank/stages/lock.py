"""One run at a time per experiment or decode dir: a ``.lock`` file naming the process that holds it.

A second run stops at once, naming the first one's PID; the lock of a run that died (kill -9
leaves it behind) is taken over, saying so, also when a later process got its PID: the lock records
the owner's start time too.
"""

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional, Tuple

from espnet_lowrank.stages import StageError, log

LOCK = ".lock"


def _stat_fields(pid: int) -> Optional[list]:
    """The fields of /proc/<pid>/stat after the name (which may hold spaces or parentheses); None when
    they cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def started(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks after boot): with its PID, who it is, as PIDs are reused."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def alive(pid: int, start: Optional[str] = None) -> bool:
    """Whether process ``pid`` runs: it exists, is not a zombie (a killed process whose parent died too
    may stay one where nothing reaps it) and, given ``start``, is the process that started then, not a
    later one that got its PID."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    if fields is None:
        return True
    if fields[0] == "Z":
        return False
    return start is None or started(pid) == start


def _owner(lock: Path) -> Tuple[Optional[int], Optional[str]]:
    """The PID in ``lock`` and, in locks written since it was recorded, its start time."""
    try:
        words = lock.read_text().split()
    except FileNotFoundError:
        return None, None
    if not words or not words[0].isdigit():
        return None, None
    return int(words[0]), (words[1] if len(words) > 1 else None)


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold ``directory/.lock`` while the block runs."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK
    while True:
        # written whole, then linked into place: a lock is never seen without its owner
        partial = directory / f"{LOCK}.{os.getpid()}"
        partial.write_text(f"{os.getpid()} {started(os.getpid()) or ''}\n")
        try:
            os.link(partial, lock)
            break
        except FileExistsError:
            owner, start = _owner(lock)
            if owner is not None and owner != os.getpid() and alive(owner, start):
                raise StageError(f"{directory} is in use by another run (PID {owner}); "
                                 "wait for it to finish or stop it") from None
            log(f"taking over {lock} from PID {owner or '?'}, which is gone")
            lock.unlink(missing_ok=True)
        finally:
            partial.unlink()
    try:
        yield
    finally:
        if _owner(lock)[0] == os.getpid():
            lock.unlink(missing_ok=True)
