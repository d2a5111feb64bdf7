"""The tools of espnet-lowrank (low-rank Conformer ASR training for ESPnet), behind one command.

Each command is a module of :mod:`espnet_lowrank.tools.command`'s convention, listed in :data:`COMMANDS`.
"""

import argparse
import importlib
from typing import Optional, Sequence

from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.tools.command import parse, summary

#: every command, by name: the module that holds it
COMMANDS = {
    "report": "espnet_lowrank.tools.report",
    "bench": "espnet_lowrank.tools.bench",
    "convert": "espnet_lowrank.tools.convert",
    "merge": "espnet_lowrank.tools.merge",
    "compare": "espnet_lowrank.studies.compare",
    "budget-study": "espnet_lowrank.studies.budget_study",
}


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
