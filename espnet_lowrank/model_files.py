"""Model files that did not come from this run are untrusted: load their weights only, and say no in one line.

A ``.pth`` is a pickle, and a crafted pickle runs code when it is loaded. torch loads weights-only by
default since 2.6, but refuses with a traceback whose advice is to load the file unsafely. Every command
that reads a model a user hands it (convert, merge, step-check, a budget) loads it here, weights-only
and explicitly, whatever the torch version's default.
"""

import pickle
from pathlib import Path
from typing import Dict, Optional

import torch

from espnet_lowrank.errors import InputError


def load_weights(path) -> Dict[str, torch.Tensor]:
    """The state dict in ``path``, loaded weights-only onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = _blocked(error)
        if blocked is None:  # not a pickle of anything: junk
            raise InputError(f"{path} is not a readable torch checkpoint (it does not unpickle)") from None
        raise InputError(f"{path}: refused: it holds Python objects besides weights, which loading would run as "
                         f"code ({blocked}); only plain state dicts are loaded") from None
    except (RuntimeError, EOFError, KeyError, OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable torch checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path} holds a {type(state).__name__}, not a state dict of weights")
    return state


def _blocked(error: Exception) -> Optional[str]:
    """The global torch's weights-only unpickler refused to import, without its advice to load unsafely;
    None when it refused no global (the bytes are no pickle)."""
    for line in str(error).splitlines():
        if "GLOBAL" in line:
            return line.strip().rstrip(".")
    return None
