"""``python -m espnet_lowrank.bin.asr_inference``: ESPnet's ``asr_inference``
with the low-rank classes registered; every option is ESPnet's own."""

import sys

import torch

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)
from espnet2.bin.asr_inference import main

if __name__ == "__main__":
    # parallel jobs divide the cores among them (espnet_lowrank.threads): the log says what this one got
    print(f"asr_inference: {torch.get_num_threads()} torch thread(s)", file=sys.stderr, flush=True)
    main()
