"""Files that appear whole or not at all: written beside their target, then renamed into place.

A reader (a later stage, ESPnet loading a checkpoint, a person) never sees half a file, and a run
killed mid-write leaves the old file as it was (rename is atomic within one file system).
"""

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def atomic_write(path: Union[str, Path]) -> Iterator[Path]:
    """Yields a hidden temporary sibling of ``path`` to write; renamed onto ``path`` when the block
    ends, removed when it raises. Makes the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.unlink(missing_ok=True)  # what a killed run of the same pid left
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Union[str, Path], text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with atomic_write(path) as partial:
        partial.write_text(text, encoding="utf-8")
