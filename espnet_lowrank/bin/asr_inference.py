"""``python -m espnet_lowrank.bin.asr_inference``: ESPnet's ``asr_inference``
with the low-rank classes registered; every option is ESPnet's own."""

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)
from espnet2.bin.asr_inference import main

if __name__ == "__main__":
    main()
