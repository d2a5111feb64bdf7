"""``espnet-lowrank``: the project's measuring tools behind one command.

    espnet-lowrank report CONFIG.yaml [...]
    espnet-lowrank bench CONFIG.yaml [CONFIG2.yaml ...]
"""

import argparse
from typing import Optional, Sequence

from espnet_lowrank.tools import bench, report


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="espnet-lowrank", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in (("report", report), ("bench", bench)):
        sub = commands.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
