"""``lowrank_conformer``: ESPnet's Conformer encoder with factorised sub-layers."""

from typing import List, Optional, Union

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from typeguard import typechecked

from espnet_lowrank._passthrough import parent_kwargs
from espnet_lowrank.architectures import BY_CHOICE
from espnet_lowrank.guide import GuidedTraining
from espnet_lowrank.options import LowRankOptions, MappingConf
from espnet_lowrank.strict_loading import CheckedStateDictLoading

class LowRankConformerEncoder(GuidedTraining, CheckedStateDictLoading, ConformerEncoder):
    """Conformer encoder whose attention, feed-forward and/or convolution
    pointwise layers are trained as ``U·V`` factors.

    Takes every ``ConformerEncoder`` argument, plus one ``lowrank_<group>``
    per group (``null`` keeps it dense, or a rank mapping such as
    ``{mapping: linear, start: 0.25, end: 0.12, multiple_of: 8}``),
    ``lowrank_input_layer`` for the convolutional subsampling (one rank ratio:
    it is a single block; dense in the paper's recipe, but at 100 frames/s it
    is a quarter of a dense model's training FLOPs),
    ``lowrank_init`` (``svd`` or ``random``) and ``lowrank_dense_init`` (the
    dense distribution the SVD starts from; match it to ESPnet's ``init``).
    """

    #: the ``lowrank_<group>`` options' sub-layers in each block
    LOWRANK_GROUPS = BY_CHOICE["lowrank_conformer"].groups

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: Optional[str] = "conv2d",
        normalize_before: bool = True,
        concat_after: bool = False,
        positionwise_layer_type: str = "linear",
        positionwise_conv_kernel_size: int = 3,
        macaron_style: bool = False,
        rel_pos_type: str = "legacy",
        pos_enc_layer_type: str = "rel_pos",
        selfattention_layer_type: str = "rel_selfattn",
        activation_type: str = "swish",
        use_cnn_module: bool = True,
        zero_triu: bool = False,
        cnn_module_kernel: int = 31,
        padding_idx: int = -1,
        interctc_layer_idx: List[int] = [],
        interctc_use_conditioning: bool = False,
        ctc_trim: bool = False,
        stochastic_depth_rate: Union[float, List[float]] = 0.0,
        layer_drop_rate: float = 0.0,
        max_pos_emb_len: int = 5000,
        qk_norm: bool = False,
        use_flash_attn: bool = True,
        use_sdpa: bool = False,
        lowrank_attention: MappingConf = None,
        lowrank_feed_forward: MappingConf = None,
        lowrank_convolution: MappingConf = None,
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
                ConformerEncoder.__init__,
                LowRankConformerEncoder.__init__,
                locals(),
                "encoder_conf",
            )
        )
        options.apply(self, self.encoders, self.embed)
