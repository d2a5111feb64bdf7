"""An option's value on an ESPnet command line, read before ESPnet's own parser sees it."""

from typing import List, Optional, Sequence


def command_line_values(argv: Sequence[str], name: str) -> List[str]:
    """Every value of ``--name value`` / ``--name=value`` in ``argv``, in order."""
    values = []
    for index, word in enumerate(argv):
        if word == f"--{name}" and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif word.startswith(f"--{name}="):
            values.append(word.split("=", 1)[1])
    return values


def command_line_value(argv: Sequence[str], name: str) -> Optional[str]:
    """The last value of ``--name value`` / ``--name=value`` in ``argv``."""
    values = command_line_values(argv, name)
    return values[-1] if values else None
