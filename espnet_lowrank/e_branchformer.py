"""``lowrank_e_branchformer``: ESPnet's E-Branchformer encoder with factorised sub-layers."""

from typing import List, Optional

from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder
from typeguard import typechecked

from espnet_lowrank._passthrough import parent_kwargs
from espnet_lowrank.architectures import BY_CHOICE
from espnet_lowrank.guide import GuidedTraining
from espnet_lowrank.options import LowRankOptions, MappingConf
from espnet_lowrank.strict_loading import CheckedStateDictLoading

class LowRankEBranchformerEncoder(GuidedTraining, CheckedStateDictLoading, EBranchformerEncoder):
    """E-Branchformer encoder whose attention, feed-forward (macaron too, with
    ``use_ffn``), cgMLP channel projections and/or merge projection are
    trained as ``U·V`` factors.

    Takes every ``EBranchformerEncoder`` argument, plus one
    ``lowrank_<group>`` rank mapping per group (``null`` keeps it dense) and
    the other ``lowrank_*`` options of
    :class:`espnet_lowrank.encoder.LowRankConformerEncoder`.
    """

    #: the ``lowrank_<group>`` options' sub-layers in each block
    LOWRANK_GROUPS = BY_CHOICE["lowrank_e_branchformer"].groups

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        attention_layer_type: str = "rel_selfattn",
        pos_enc_layer_type: str = "rel_pos",
        rel_pos_type: str = "latest",
        cgmlp_linear_units: int = 2048,
        cgmlp_conv_kernel: int = 31,
        use_linear_after_conv: bool = False,
        gate_activation: str = "identity",
        num_blocks: int = 12,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: Optional[str] = "conv2d",
        zero_triu: bool = False,
        padding_idx: int = -1,
        layer_drop_rate: float = 0.0,
        max_pos_emb_len: int = 5000,
        use_ffn: bool = False,
        macaron_ffn: bool = False,
        ffn_activation_type: str = "swish",
        linear_units: int = 2048,
        positionwise_layer_type: str = "linear",
        merge_conv_kernel: int = 3,
        interctc_layer_idx=None,
        interctc_use_conditioning: bool = False,
        qk_norm: bool = False,
        use_flash_attn: bool = True,
        gradient_checkpoint_layers: List[int] = [],
        use_sdpa: bool = False,
        lowrank_attention: MappingConf = None,
        lowrank_feed_forward: MappingConf = None,
        lowrank_cgmlp: MappingConf = None,
        lowrank_merge: MappingConf = None,
        lowrank_input_layer: MappingConf = None,
        lowrank_init: str = "svd",
        lowrank_dense_init: str = "pytorch",
        lowrank_guide: MappingConf = None,
        lowrank_frobenius_decay: float = 0.0,
        lowrank_lr_scale: float = 1.0,
    ):
        options = LowRankOptions.read("encoder_conf", self.LOWRANK_GROUPS, locals())  # checked before anything is built
        super().__init__(
            **parent_kwargs(
                EBranchformerEncoder.__init__,
                LowRankEBranchformerEncoder.__init__,
                locals(),
                "encoder_conf",
            )
        )
        options.apply(self, self.encoders, self.embed)
