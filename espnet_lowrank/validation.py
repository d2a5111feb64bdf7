"""Checks of option values shared by the layers, their training aids and the configs: each failure
names the key and says what would be valid."""

from typing import Any, Iterable

from espnet_lowrank.errors import InputError


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    """Refuse an unknown option value, naming the key and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{key}={value!r} is unknown; choose one of {', '.join(choices)}")


def is_number(value: Any) -> bool:
    """An int or float, not a bool (YAML's ``true`` is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
