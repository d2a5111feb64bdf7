"""Low-rank (W = U·V) Conformer training for ESPnet.

Importing the package registers ``encoder: lowrank_conformer`` and
``decoder: lowrank_transformer`` in ESPnet's ASR task.
"""

from espnet_lowrank.layers import LowRankLinear, LowRankPointwiseConv1d
from espnet_lowrank.rank_mapping import RANK_MAPPINGS, break_even_rank, build_rank_mapping
from espnet_lowrank.register import register
from espnet_lowrank.encoder import LowRankConformerEncoder
from espnet_lowrank.decoder import LowRankTransformerDecoder

register()

__all__ = [
    "LowRankLinear",
    "LowRankPointwiseConv1d",
    "LowRankConformerEncoder",
    "LowRankTransformerDecoder",
    "RANK_MAPPINGS",
    "break_even_rank",
    "build_rank_mapping",
    "register",
]
__version__ = "0.1.0"
