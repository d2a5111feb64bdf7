"""``lowrank_conformer``: ESPnet's Conformer encoder with factorised sub-layers."""

from typing import Any, Dict, List, Optional, Union

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from typeguard import typechecked

from espnet_lowrank._passthrough import parent_kwargs
from espnet_lowrank.architectures import BY_CHOICE
from espnet_lowrank.frobenius import apply_frobenius_decay
from espnet_lowrank.guide import GuidedTraining
from espnet_lowrank.lr_scale import apply_lr_scale
from espnet_lowrank.strict_loading import CheckedStateDictLoading
from espnet_lowrank.surgery import factorize_blocks

#: Factorisable layers of a convolutional subsampling front end
#: (``input_layer: conv2d*``): the channel-mixing convolutions after the first
#: (which sees a single channel), nine tenths of its FLOPs. The projection to
#: ``output_size`` stays dense: nothing bypasses it, so its rank would cap the
#: rank of everything the encoder sees (measured: at 25% the demo's test WER
#: went from 33% to 60%, docs/results.md).
INPUT_LAYER_PATHS = ("conv.2", "conv.4")


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
        lowrank_attention: Optional[Dict[str, Any]] = None,
        lowrank_feed_forward: Optional[Dict[str, Any]] = None,
        lowrank_convolution: Optional[Dict[str, Any]] = None,
        lowrank_input_layer: Optional[Dict[str, Any]] = None,
        lowrank_init: str = "svd",
        lowrank_dense_init: str = "pytorch",
        lowrank_guide: Optional[Dict[str, Any]] = None,
        lowrank_frobenius_decay: float = 0.0,
        lowrank_lr_scale: float = 1.0,
    ):
        super().__init__(
            **parent_kwargs(
                ConformerEncoder.__init__,
                LowRankConformerEncoder.__init__,
                locals(),
                "encoder_conf",
            )
        )
        factorise_encoder(
            self,
            self.LOWRANK_GROUPS,
            {
                "attention": lowrank_attention,
                "feed_forward": lowrank_feed_forward,
                "convolution": lowrank_convolution,
            },
            lowrank_input_layer,
            lowrank_init,
            lowrank_dense_init,
            lowrank_guide,
            lowrank_frobenius_decay,
            lowrank_lr_scale,
        )


def factorise_encoder(
    encoder, groups, settings, input_layer, init, dense_init, guide, frobenius_decay, lr_scale
) -> None:
    """What every low-rank encoder does once its ESPnet parent has built it:
    factorise the groups of every block and the subsampling's convolutions,
    then attach the guide, Frobenius decay and learning-rate scale, which all
    act on the factor pairs. ``encoder.lowrank_ranks`` records the ranks."""
    encoder.lowrank_ranks = factorize_blocks(
        encoder.encoders, groups, settings, init=init, dense_init=dense_init, key_prefix="encoder_conf.lowrank_"
    )
    input_ranks = factorize_blocks(
        [encoder.embed],
        {"input_layer": INPUT_LAYER_PATHS},
        {"input_layer": input_layer},
        init=init,
        dense_init=dense_init,
        key_prefix="encoder_conf.lowrank_",
    )
    encoder.lowrank_ranks.update({"embed." + name.split(".", 1)[1]: rank for name, rank in input_ranks.items()})
    encoder.attach_guide(guide, "encoder_conf.lowrank_guide")
    apply_frobenius_decay(encoder, frobenius_decay, "encoder_conf.lowrank_frobenius_decay")
    apply_lr_scale(encoder, lr_scale, "encoder_conf.lowrank_lr_scale")
