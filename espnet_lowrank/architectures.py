"""The one table of what espnet-lowrank factorises: each low-rank class, the ESPnet class it
extends, the part of the model it replaces, where its blocks live and which sub-layers of a
block make up each ``lowrank_<group>`` option.

Registration, config checks, conversion and the budget all read it, so a new architecture is
one row here (and its class). Light on purpose: no torch, no ESPnet, so the start-up hook and
the recipe's light processes can read it for free.
"""

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Architecture:
    choice: str  #: our ESPnet choice name (``encoder: lowrank_conformer``)
    part: str  #: the part of an ASR model it is: ``encoder`` or ``decoder``
    module: str  #: where our class lives ...
    class_name: str  #: ... and its name
    dense_choice: str  #: the choice name of the ESPnet class it extends
    dense_class: str  #: that class, as ``module.QualifiedName``
    blocks: str  #: the attribute holding its blocks (``encoders``)
    groups: Mapping[str, Tuple[str, ...]]  #: ``lowrank_<group>`` -> its sub-layer paths in one block


def _attention(name: str) -> Tuple[str, ...]:
    return tuple(f"{name}.linear_{projection}" for projection in ("q", "k", "v", "out"))


_FEED_FORWARD = ("feed_forward.w_1", "feed_forward.w_2", "feed_forward_macaron.w_1", "feed_forward_macaron.w_2")

ARCHITECTURES = (
    Architecture(
        "lowrank_conformer", "encoder", "espnet_lowrank.encoder", "LowRankConformerEncoder",
        "conformer", "espnet2.asr.encoder.conformer_encoder.ConformerEncoder", "encoders",
        {
            "attention": _attention("self_attn"),
            "feed_forward": _FEED_FORWARD,
            "convolution": ("conv_module.pointwise_conv1", "conv_module.pointwise_conv2"),
        },
    ),
    # The cgMLP's depthwise convolution and its gate's optional linear stay dense: they act per
    # channel or are small; the channel projections carry its parameters.
    Architecture(
        "lowrank_e_branchformer", "encoder", "espnet_lowrank.e_branchformer", "LowRankEBranchformerEncoder",
        "e_branchformer", "espnet2.asr.encoder.e_branchformer_encoder.EBranchformerEncoder", "encoders",
        {
            "attention": _attention("attn"),
            "feed_forward": _FEED_FORWARD,
            "cgmlp": ("cgmlp.channel_proj1.0", "cgmlp.channel_proj2"),
            "merge": ("merge_proj",),
        },
    ),
    Architecture(
        "lowrank_transformer", "decoder", "espnet_lowrank.decoder", "LowRankTransformerDecoder",
        "transformer", "espnet2.asr.decoder.transformer_decoder.TransformerDecoder", "decoders",
        {
            "self_attention": _attention("self_attn"),
            "src_attention": _attention("src_attn"),
            "feed_forward": ("feed_forward.w_1", "feed_forward.w_2"),
        },
    ),
)

BY_CHOICE: Dict[str, Architecture] = {architecture.choice: architecture for architecture in ARCHITECTURES}

#: the parts of an ASR model ours replace, in model order
PARTS = tuple(dict.fromkeys(a.part for a in ARCHITECTURES))

#: every ``part.blocks`` path that holds an architecture's blocks (``encoder.encoders``)
BLOCK_CONTAINERS = tuple(dict.fromkeys(f"{a.part}.{a.blocks}" for a in ARCHITECTURES))


def twin_of(part: str, dense_choice: object) -> Optional[Architecture]:
    """Ours that extends ESPnet's ``dense_choice`` for ``part``, if any."""
    return next((a for a in ARCHITECTURES if a.part == part and a.dense_choice == dense_choice), None)


def of_dense_module(module: object) -> Optional[Architecture]:
    """Ours that extends the class of the dense ``module`` exactly (not a subclass of it)."""
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    return next((a for a in ARCHITECTURES if a.dense_class == name), None)
