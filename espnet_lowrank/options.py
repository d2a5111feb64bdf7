"""The ``lowrank_*`` options of our ESPnet classes, read and checked in one place for all three.

ESPnet reads each class's signature (``--print_config``, config checks), so every class still names
its options as arguments; its ``__init__`` hands them here as they came (:meth:`LowRankOptions.read`),
where every value is checked, naming its YAML key, before anything is built, and then applied the
same way to an encoder or a decoder (:meth:`LowRankOptions.apply`).
"""

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from torch import nn

from espnet_lowrank.errors import InputError
from espnet_lowrank.frobenius import apply_frobenius_decay
from espnet_lowrank.guide import check_guide_conf
from espnet_lowrank.layers import DENSE_INITS, FACTOR_INITS
from espnet_lowrank.lr_scale import apply_lr_scale
from espnet_lowrank.rank_mapping import build_rank_mapping
from espnet_lowrank.surgery import factorise_blocks
from espnet_lowrank.validation import check_choice, is_number

#: how a ``lowrank_<group>`` option is typed in our signatures: a rank mapping's YAML dict, or null (dense)
MappingConf = Optional[Dict[str, Any]]

#: Factorisable layers of a convolutional subsampling front end (``input_layer: conv2d*``): the
#: channel-mixing convolutions after the first (which sees a single channel), nine tenths of its FLOPs.
#: The projection to ``output_size`` stays dense: nothing bypasses it, so its rank would cap the rank of
#: everything the encoder sees (measured: at 25% the demo's test WER went from 33% to 60%,
#: docs/results.md).
INPUT_LAYER_PATHS = ("conv.2", "conv.4")


@dataclass(frozen=True)
class LowRankOptions:
    conf: str  #: ``encoder_conf`` or ``decoder_conf``: the YAML group the options came from
    groups: Mapping[str, Optional[Mapping[str, Any]]]  #: ``lowrank_<group>``: its mapping, or None (dense)
    input_layer: Optional[Mapping[str, Any]]  #: the subsampling's mapping (encoders only)
    init: str
    dense_init: str
    guide: Optional[Mapping[str, Any]]
    frobenius_decay: float
    lr_scale: float

    @classmethod
    def read(cls, conf: str, groups, arguments: Mapping[str, Any]) -> "LowRankOptions":
        """The options among ``arguments`` (our ``__init__``'s ``locals()``), each checked; ``groups``
        are the class's layer groups. The first bad value is refused, naming its key."""
        values = {name[len("lowrank_"):]: value for name, value in arguments.items() if name.startswith("lowrank_")}
        options = cls(conf, {group: values[group] for group in groups}, values.get("input_layer"),
                      values["init"], values["dense_init"], values["guide"], values["frobenius_decay"],
                      values["lr_scale"])
        options.check()
        return options

    def key(self, name: str) -> str:
        return f"{self.conf}.lowrank_{name}"

    def check(self) -> None:
        for group, mapping in [*self.groups.items(), ("input_layer", self.input_layer)]:
            if mapping is not None:
                build_rank_mapping(mapping, self.key(group))
        check_choice(self.key("init"), self.init, FACTOR_INITS)
        check_choice(self.key("dense_init"), self.dense_init, DENSE_INITS)
        check_guide_conf(self.guide, self.key("guide"))
        if not is_number(self.frobenius_decay) or self.frobenius_decay < 0:
            raise InputError(f"{self.key('frobenius_decay')}={self.frobenius_decay!r}: must be a number ≥ 0 "
                             "(0 turns it off)")
        if not is_number(self.lr_scale) or self.lr_scale <= 0:
            raise InputError(f"{self.key('lr_scale')}={self.lr_scale!r}: must be a number > 0 "
                             "(1 leaves the factors' learning rate as is)")

    def apply(self, module: nn.Module, blocks, subsampling: Optional[nn.Module] = None) -> None:
        """Factorise the groups of every block (and the ``subsampling``'s convolutions), then attach the
        guide, Frobenius decay and learning-rate scale, which act on the factor pairs.
        ``module.lowrank_ranks`` records the ranks."""
        prefix = f"{self.conf}.lowrank_"
        module.lowrank_ranks = factorise_blocks(blocks, module.LOWRANK_GROUPS, self.groups, init=self.init,
                                                dense_init=self.dense_init, key_prefix=prefix)
        if subsampling is not None:
            ranks = factorise_blocks([subsampling], {"input_layer": INPUT_LAYER_PATHS},
                                     {"input_layer": self.input_layer}, init=self.init, dense_init=self.dense_init,
                                     key_prefix=prefix)
            module.lowrank_ranks.update({"embed." + name.split(".", 1)[1]: rank for name, rank in ranks.items()})
        module.attach_guide(self.guide, self.key("guide"))
        apply_frobenius_decay(module, self.frobenius_decay, self.key("frobenius_decay"))
        apply_lr_scale(module, self.lr_scale, self.key("lr_scale"))

