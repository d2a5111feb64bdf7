"""One run at a time per experiment or decode dir: a ``.lock`` file naming the process that holds it.

A second run stops at once, naming the first one's PID; the lock of a run that died (kill -9
leaves it behind) is taken over, saying so.
"""

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

from espnet_lowrank.stages import StageError, log

LOCK = ".lock"


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie (a killed process whose parent died
    too may stay one where nothing reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # /proc/<pid>/stat: "pid (name) state ...", the name may hold spaces or parentheses
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner(lock: Path) -> Optional[int]:
    try:
        text = lock.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold ``directory/.lock`` while the block runs."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK
    while True:
        # written whole, then linked into place: a lock is never seen without its owner
        partial = directory / f"{LOCK}.{os.getpid()}"
        partial.write_text(f"{os.getpid()}\n")
        try:
            os.link(partial, lock)
            break
        except FileExistsError:
            owner = _owner(lock)
            if owner is not None and owner != os.getpid() and alive(owner):
                raise StageError(f"{directory} is in use by another run (PID {owner}); "
                                 "wait for it to finish or stop it") from None
            log(f"taking over {lock} from PID {owner or '?'}, which is gone")
            lock.unlink(missing_ok=True)
        finally:
            partial.unlink()
    try:
        yield
    finally:
        if _owner(lock) == os.getpid():
            lock.unlink(missing_ok=True)
