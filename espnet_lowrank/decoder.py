"""``lowrank_transformer``: ESPnet's Transformer decoder with factorised sub-layers."""

from typing import List

from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from typeguard import typechecked

from espnet_lowrank._compat import PositionalEncoding
from espnet_lowrank._passthrough import parent_kwargs
from espnet_lowrank.architectures import BY_CHOICE
from espnet_lowrank.guide import GuidedTraining
from espnet_lowrank.options import LowRankOptions, MappingConf
from espnet_lowrank.strict_loading import CheckedStateDictLoading


class LowRankTransformerDecoder(GuidedTraining, CheckedStateDictLoading, TransformerDecoder):
    """Transformer decoder whose self-attention, source-attention and/or
    feed-forward layers are trained as ``U·V`` factors; settings as in
    :class:`espnet_lowrank.encoder.LowRankConformerEncoder`."""

    #: the ``lowrank_<group>`` options' sub-layers in each block
    LOWRANK_GROUPS = BY_CHOICE["lowrank_transformer"].groups

    @typechecked
    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        self_attention_dropout_rate: float = 0.0,
        src_attention_dropout_rate: float = 0.0,
        input_layer: str = "embed",
        use_output_layer: bool = True,
        pos_enc_class=PositionalEncoding,
        normalize_before: bool = True,
        concat_after: bool = False,
        layer_drop_rate: float = 0.0,
        qk_norm: bool = False,
        use_flash_attn: bool = True,
        gradient_checkpoint_layers: List[int] = [],
        use_sdpa: bool = False,
        lowrank_self_attention: MappingConf = None,
        lowrank_src_attention: MappingConf = None,
        lowrank_feed_forward: MappingConf = None,
        lowrank_init: str = "svd",
        lowrank_dense_init: str = "pytorch",
        lowrank_guide: MappingConf = None,
        lowrank_frobenius_decay: float = 0.0,
        lowrank_lr_scale: float = 1.0,
    ):
        options = LowRankOptions.read("decoder_conf", self.LOWRANK_GROUPS, locals())  # checked before anything is built
        super().__init__(
            **parent_kwargs(
                TransformerDecoder.__init__,
                LowRankTransformerDecoder.__init__,
                locals(),
                "decoder_conf",
            )
        )
        options.apply(self, self.decoders)
