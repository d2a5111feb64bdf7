"""Hand our explicit constructor arguments to ESPnet's parent class.

Our classes write out every argument of the ESPnet class they extend (ESPnet's
``--print_config`` reads the signature), but ESPnet releases differ: 202611
added ``use_sdpa``, which 202511 lacks. An argument the installed parent does
not know is dropped while it has its default, and refused otherwise.
"""

import inspect
from typing import Any, Callable, Dict

from espnet_lowrank.errors import InputError


def parent_kwargs(
    parent_init: Callable, own_init: Callable, local_values: Dict[str, Any], conf_name: str
) -> Dict[str, Any]:
    """The parent's keyword arguments, taken from the ``locals()`` of our
    ``__init__``: every argument of ours except ``self`` and ``lowrank_*``."""
    accepted = inspect.signature(parent_init).parameters
    defaults = inspect.signature(own_init).parameters
    kwargs = {}
    for name in defaults:
        if name == "self" or name.startswith("lowrank_"):
            continue
        value = local_values[name]
        if name in accepted:
            kwargs[name] = value
        elif value != defaults[name].default:
            raise InputError(
                f"{conf_name}.{name}={value!r} is not supported by the installed ESPnet "
                f"({_espnet_version()}); leave it at {defaults[name].default!r} or upgrade ESPnet"
            )
    return kwargs


def _espnet_version() -> str:
    try:
        from importlib.metadata import version

        return "espnet " + version("espnet")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown version"
