"""``python -m espnet_lowrank.bin.asr_train``: ESPnet's ``asr_train`` with the
low-rank classes registered; every option is ESPnet's own."""

import espnet_lowrank  # noqa: F401  (registers the low-rank classes)
from espnet2.bin.asr_train import main

if __name__ == "__main__":
    main()
