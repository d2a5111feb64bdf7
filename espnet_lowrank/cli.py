"""``espnet-lowrank``: the project's tools behind one command.

    espnet-lowrank report CONFIG.yaml [...]        parameters, ranks and MACs per layer
    espnet-lowrank bench CONFIG.yaml [...]         training and inference speed, side by side
    espnet-lowrank convert --dense_config ...      a trained dense model factorised into a low-rank one
    espnet-lowrank step-check CONFIG.yaml ...      how far one optimiser step moves U·V against dense
    espnet-lowrank merge --config ... --model ...  a low-rank model as stock ESPnet (dense weights, no plugin)
    espnet-lowrank bench-jobs EXP DATA_DIR         stage 12's parallel decoding under each thread setting
"""

import argparse
from typing import Optional, Sequence

from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.tools import bench, bench_jobs, convert, merge, report, step_check

COMMANDS = (("report", report), ("bench", bench), ("convert", convert), ("step-check", step_check),
            ("merge", merge), ("bench-jobs", bench_jobs))


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="espnet-lowrank", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS:
        sub = commands.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
