"""Every factor pair of a model, one row each: where it is, which ``lowrank_<group>`` and block it
belongs to, its rank, and what it costs against the dense layer it replaces. Read by the
``report`` and ``convert`` commands (and what they print) and by the conversion's energy table."""

from dataclasses import dataclass
from typing import List

from espnet_lowrank.surgery import low_rank_layers

#: Block number of the encoder's convolutional subsampling (it runs before block 0).
INPUT_LAYER_BLOCK = -1


@dataclass
class LayerRow:
    module: str
    part: str  # encoder | decoder
    group: str
    block: int
    d_in: int
    d_out: int
    rank: int
    ratio: float
    params: int
    dense_params: int
    macs: int
    dense_macs: int


def layer_rows(model) -> List[LayerRow]:
    """One row per factor pair of ``model``, in module order."""
    rows = []
    for name, layer in low_rank_layers(model):
        part, stack, rest = name.split(".", 2)
        if stack == "embed":  # the convolutional subsampling, before block 0
            group, block = "input_layer", INPUT_LAYER_BLOCK
        else:
            index, sub = rest.split(".", 1)
            groups = model.get_submodule(part).LOWRANK_GROUPS
            group = next(g for g, paths in groups.items() if sub in paths)
            block = int(index)
        rows.append(LayerRow(
            module=name, part=part, group=group, block=block,
            d_in=layer.in_features, d_out=layer.out_features, rank=layer.rank,
            ratio=layer.rank / min(layer.in_features, layer.out_features),
            params=layer.num_parameters(), dense_params=layer.dense_num_parameters(),
            macs=layer.macs_per_position(), dense_macs=layer.dense_macs_per_position(),
        ))
    return rows
