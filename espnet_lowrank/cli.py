"""The tools of espnet-lowrank (low-rank Conformer ASR training for ESPnet), behind one command.

Each command is a module with ``add_arguments(parser)`` and ``run(args)``, listed in
:data:`COMMANDS`; ``python -m <module>`` runs it alone with the same options
(:func:`command_main`). Bad input ends a command with one line, not a traceback.
"""

import argparse
import importlib
from typing import Callable, Optional, Sequence

from espnet_lowrank.errors import one_line_errors

#: every command, by name: the module that holds it
COMMANDS = {
    "report": "espnet_lowrank.tools.report",
    "bench": "espnet_lowrank.tools.bench",
    "convert": "espnet_lowrank.tools.convert",
    "merge": "espnet_lowrank.tools.merge",
    "step-check": "espnet_lowrank.tools.step_check",
    "bench-jobs": "espnet_lowrank.tools.bench_jobs",
    "gpu-check": "espnet_lowrank.studies.gpu_check",
    "compare": "espnet_lowrank.studies.compare",
    "budget-study": "espnet_lowrank.studies.budget_study",
    "soak": "espnet_lowrank.studies.soak",
}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="espnet-lowrank", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=summary(module.__doc__), description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(build_parser(), argv)
    args.argv = argv[1:]
    args.run(args)


if __name__ == "__main__":
    main()
