"""Low-rank (W = U·V) Conformer training for ESPnet: LR-SMS, the Low-Rank Speech Model from Scratch of
Fernandez-Lopez et al., "Full-Rank No More" (ICASSP 2025), and the tools around it.

Importing the package registers ``encoder: lowrank_conformer``, ``encoder: lowrank_e_branchformer`` and
``decoder: lowrank_transformer`` in ESPnet's ASR task when ESPnet's task module loads, so importing us stays
cheap. An installed package does so in every process without the import (``espnet_lowrank.pth``).
"""

from espnet_lowrank.registration import register, register_when_espnet_loads

_LAZY = {
    "FactorPair": "espnet_lowrank.layers",
    "LowRankLinear": "espnet_lowrank.layers",
    "LowRankPointwiseConv1d": "espnet_lowrank.layers",
    "LowRankConformerEncoder": "espnet_lowrank.encoder",
    "LowRankEBranchformerEncoder": "espnet_lowrank.e_branchformer",
    "LowRankTransformerDecoder": "espnet_lowrank.decoder",
    "RANK_MAPPINGS": "espnet_lowrank.rank_mapping",
    "break_even_rank": "espnet_lowrank.rank_mapping",
    "build_rank_mapping": "espnet_lowrank.rank_mapping",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'espnet_lowrank' has no attribute {name!r}")


register_when_espnet_loads()

__all__ = [*_LAZY, "register"]
__version__ = "0.1.0"
