"""The project's tools, each behind ``espnet-lowrank <command>`` (``espnet_lowrank.cli``) and runnable
alone as ``python -m espnet_lowrank.tools.<name>`` with the same options."""

import argparse
from typing import Callable, Optional, Sequence

from espnet_lowrank.errors import one_line_errors


def standalone_main(doc: str, add_arguments: Callable, run: Callable) -> Callable:
    """The ``main`` of a tool module run alone: its options, then its ``run``; bad input in one line."""

    @one_line_errors
    def main(argv: Optional[Sequence[str]] = None) -> None:
        parser = argparse.ArgumentParser(description=doc.splitlines()[0])
        add_arguments(parser)
        run(parser.parse_args(argv))

    return main
