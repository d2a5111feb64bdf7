"""Checkpoints that survive a crash, for ESPnet's trainer.

ESPnet writes ``checkpoint.pth`` and ``Nepoch.pth`` in place with
``torch.save``: a kill during the write leaves a truncated file, and the next
``--resume`` dies on it (or, once it is deleted, starts again at epoch 1 and
overwrites the finished epochs). In our training entry point:

- :func:`install_atomic_save` makes every ``torch.save`` to a path write a
  hidden partial file and rename it into place, so a file either holds the
  whole new state or the whole old one. The checkpoint being replaced is
  kept as ``checkpoint.prev.pth`` (a hard link, so never a copy half-made).
- :func:`recover_checkpoint`, before ESPnet resumes, falls back to
  ``checkpoint.prev.pth`` when ``checkpoint.pth`` does not load, saying so in
  the log, and refuses to start from epoch 1 over finished epochs; it also
  restores the last epoch's ``Nepoch.pth`` from the checkpoint when a kill
  came between the two saves. A
  multi-process training runs it once before launching
  (``python -m espnet_lowrank.checkpoints EXP_DIR``), not in every rank.
"""

import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional, Tuple

import torch

from espnet_lowrank.atomic import atomic_write
from espnet_lowrank.errors import InputError, one_line_errors

CHECKPOINT = "checkpoint.pth"
PREVIOUS = "checkpoint.prev.pth"
_original_save = torch.save


def atomic_save(obj, f, *args, **kwargs):
    """``torch.save`` that renames a finished file into place."""
    if not isinstance(f, (str, os.PathLike)):
        return _original_save(obj, f, *args, **kwargs)
    target = Path(f)
    with atomic_write(target) as partial:
        _original_save(obj, partial, *args, **kwargs)
        if target.name == CHECKPOINT and target.is_file():
            _keep_as(target, target.with_name(PREVIOUS))


def _keep_as(source: Path, destination: Path) -> None:
    with atomic_write(destination) as staged:
        try:
            os.link(source, staged)
        except OSError:  # a file system without hard links
            shutil.copy2(source, staged)


def install_atomic_save() -> None:
    torch.save = atomic_save


def _load(path: Path) -> Tuple[Optional[dict], Optional[str]]:
    """The states in ``path`` as ESPnet's resume loads them, or None and why they do not load."""
    from espnet_lowrank._compat import load_checkpoint

    try:
        states = load_checkpoint(path, map_location="cpu")
        states["reporter"]["epoch"], states["model"]
    except Exception as error:  # a damaged file fails in many ways (zip, pickle, EOF)
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return states, None


def _restore_epoch_file(output_dir: Path, states: dict) -> None:
    """ESPnet saves ``checkpoint.pth``, then ``Nepoch.pth``: a kill between the two leaves epoch N
    finished without its file, which the model averaging after the last epoch then fails to read. The
    checkpoint holds the same weights."""
    epoch = states["reporter"]["epoch"]
    target = output_dir / f"{epoch}epoch.pth"
    if epoch < 1 or target.exists():
        return
    atomic_save(states["model"], target)
    latest = output_dir / "latest.pth"
    latest.unlink(missing_ok=True)
    latest.symlink_to(target.name)
    logging.warning(f"{target} was not written before the run stopped; restored from {CHECKPOINT}")


def finished_epochs(output_dir: Path):
    return sorted(int(m.group(1)) for p in output_dir.glob("*epoch.pth") if (m := re.fullmatch(r"(\d+)epoch\.pth", p.name)))


def recover_checkpoint(output_dir: Path) -> None:
    """Make ``output_dir/checkpoint.pth`` one that ESPnet can resume from,
    or stop before training would overwrite finished epochs."""
    checkpoint, previous = output_dir / CHECKPOINT, output_dir / PREVIOUS
    epochs = finished_epochs(output_dir)
    if checkpoint.exists():
        states, error = _load(checkpoint)
        if error is None:
            _restore_epoch_file(output_dir, states)
            return
        damaged = checkpoint.with_name(CHECKPOINT + ".damaged")
        os.replace(checkpoint, damaged)
        logging.warning(f"{checkpoint} is damaged ({error}); kept as {damaged}")
    elif not epochs:
        return  # a new run
    states, error = _load(previous) if previous.exists() else (None, "missing")
    if error is None:
        _keep_as(previous, checkpoint)
        _restore_epoch_file(output_dir, states)
        logging.warning(f"resuming from the last good state, {previous} (the epoch after it is trained again)")
        return
    raise InputError(
        f"{output_dir} has finished epochs ({', '.join(map(str, epochs)) or 'none kept'}) but no checkpoint "
        f"that loads, so training would start again at epoch 1 over them: move {output_dir} away to start "
        "over, or train on from one of its epochs with --init_param"
    )


@one_line_errors
def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    (output_dir,) = sys.argv[1:] if argv is None else argv
    recover_checkpoint(Path(output_dir))


if __name__ == "__main__":
    main()
