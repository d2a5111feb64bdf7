"""One convention for every ``espnet-lowrank`` command: a module with ``add_arguments(parser)`` and
``run(args)``, which ``python -m <module>`` runs alone with the same options (:func:`command_main`) and
``espnet-lowrank <command>`` runs among the others (:mod:`espnet_lowrank.cli`). Bad input ends a command
with one line, not a traceback."""

import argparse
from typing import Callable, Optional, Sequence

from espnet_lowrank.errors import one_line_errors


def summary(doc: str) -> str:
    """A command's docstring's first line, without the usage it ends with."""
    return doc.splitlines()[0].split(": ``")[0].rstrip(":.") + "."


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser``'s options, and what follows ``--`` as ``args.run_args`` for a command that takes
    run.sh options there (it sets a ``run_args`` default); ``args.argv`` keeps the command's own words."""
    words = list(argv)
    after = []
    if "--" in words:
        words, after = words[: words.index("--")], words[words.index("--") + 1:]
    args = parser.parse_args(words)
    if after and not hasattr(args, "run_args"):
        parser.error(f"unrecognized arguments: -- {' '.join(after)}")
    if hasattr(args, "run_args"):
        args.run_args = after
    return args


def command_main(doc: str, add_arguments: Callable, run: Callable) -> Callable:
    """The ``main`` of a command's module run alone: its options, then its ``run``."""

    @one_line_errors
    def main(argv: Optional[Sequence[str]] = None) -> None:
        import sys

        argv = sys.argv[1:] if argv is None else list(argv)
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(parser)
        args = parse(parser, argv)
        args.argv = argv
        run(args)

    return main
