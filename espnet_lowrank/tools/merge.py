"""A low-rank model back into stock ESPnet: ``espnet-lowrank merge``.

    espnet-lowrank merge --config exp/asr_lrsms/config.yaml --model exp/asr_lrsms/valid.acc.ave.pth \\
        --out_dir exp/asr_lrsms_merged

Every factor pair becomes the dense weight it applies (U·V), so the model
needs neither this plugin nor its classes: the output is a ``config.yaml``
with ESPnet's own ``encoder: conformer`` / ``decoder: transformer`` and no
``lowrank_*`` option, and a ``model.pth`` that loads into it strictly. The
merged model is checked against the low-rank one before anything is written
(encoder and decoder outputs on random input, max abs difference ≤ 1e-4 in
fp32). It has the dense twin's parameter count: deploy it where installing
the plugin is a hurdle, keep the low-rank one where size matters.
"""

import argparse

from espnet_lowrank.merging import merge
from espnet_lowrank.tools.command import command_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the low-rank run's saved config.yaml")
    parser.add_argument("--model", required=True, help="its weights, e.g. valid.acc.ave.pth")
    parser.add_argument("--out_dir", required=True, help="where config.yaml and model.pth go")
    parser.add_argument("--pack", help="also pack them into this asr_model.zip")


def run(args: argparse.Namespace) -> None:
    result = merge(args.config, args.model, args.out_dir, args.pack)
    print(f"wrote {result['config']} and {result['model']}: {result['low_rank_params'] / 1e6:.2f} M parameters "
          f"in low rank, {result['merged_params'] / 1e6:.2f} M merged; outputs differ by at most "
          f"{result['max_difference']:.1e}")


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
