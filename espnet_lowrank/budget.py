"""Ranks from a parameter budget: ``espnet-lowrank convert --param_ratio 0.5``.

Which rank each layer group of each block gets, so that the low-rank model
has ``param_ratio`` times the dense model's parameters and keeps as much of
the trained weights' spectra as it can.

The unit is one layer group in one block (say the encoder's attention in
block 3): its layers share one ratio, as the configs' explicit mappings say.
Each ``multiple_of`` more rank costs the unit ``multiple_of · Σ(d_in + d_out)``
parameters and keeps the next singular values' energy (σ², each layer's
counted as a share of its own total, so every layer weighs the same).
Singular values only fall, so each unit's gains per step fall too: taking
the best gain per parameter first is the greedy solution of a knapsack with
concave values, within one step of the optimum (tested against brute
force). Ranks stay at or below break-even, where U·V stops being smaller
than the dense weight.
"""

import heapq
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from espnet_lowrank.rank_mapping import break_even_rank


def _groups() -> Dict[str, Mapping[str, Sequence[str]]]:
    """The groups the budget may factorise: the low-rank classes' own, by part."""
    from espnet_lowrank.decoder import DECODER_GROUPS
    from espnet_lowrank.encoder import ENCODER_GROUPS

    return {"encoder": ENCODER_GROUPS, "decoder": DECODER_GROUPS}


@dataclass(frozen=True)
class Unit:
    """One layer group of one block, and what each rank of it costs and keeps."""

    part: str
    group: str
    block: int
    full_rank: int
    break_even: float  # the lowest of its layers' break-even ranks
    cost_per_rank: int  # Σ (d_in + d_out) over its layers
    dense_params: int  # Σ d_in · d_out over its layers
    energy: Tuple[float, ...]  # energy[r]: kept share at rank r, averaged over its layers; energy[0] = 0

    @property
    def name(self) -> str:
        return f"{self.part}.{self.group}[{self.block}]"


def unit_from_weights(part: str, group: str, block: int, matrices: Sequence[torch.Tensor]) -> Unit:
    """A unit from its layers' dense weights (as ``out × in`` matrices)."""
    shares = []
    for matrix in matrices:
        squares = torch.linalg.svdvals(matrix.double()).square()
        shares.append(torch.cat([squares.new_zeros(1), squares.cumsum(0)]) / squares.sum())
    full = min(min(m.shape) for m in matrices)
    energy = torch.stack([share[: full + 1] for share in shares]).mean(0)
    return Unit(part, group, block, full, min(break_even_rank(m.shape[1], m.shape[0]) for m in matrices),
                sum(sum(m.shape) for m in matrices),
                sum(m.shape[0] * m.shape[1] for m in matrices), tuple(energy.tolist()))


def max_rank(unit: Unit, multiple_of: int) -> int:
    """The largest multiple of ``multiple_of`` at or below the break-even rank of each of its layers."""
    return min(unit.full_rank, int(unit.break_even // multiple_of) * multiple_of)


def allocate(units: Sequence[Unit], budget: int, multiple_of: int = 8) -> Dict[str, int]:
    """Rank per unit name: at least ``multiple_of`` each, Σ rank · cost_per_rank ≤ ``budget``,
    energy kept as high as greedy steps of ``multiple_of`` reach."""
    ranks = {unit.name: multiple_of for unit in units}
    for unit in units:
        if max_rank(unit, multiple_of) < multiple_of:
            raise ValueError(f"{unit.name}: its break-even rank is below multiple_of={multiple_of}")
    spent = sum(multiple_of * unit.cost_per_rank for unit in units)
    if spent > budget:
        raise ValueError(f"the budget leaves {budget:,} parameters for the factorised layers, but rank "
                         f"{multiple_of} everywhere already needs {spent:,}: ask for a larger --param_ratio")

    def step(unit: Unit):
        rank = ranks[unit.name]
        if rank + multiple_of > max_rank(unit, multiple_of):
            return None
        gain = unit.energy[rank + multiple_of] - unit.energy[rank]
        return (-gain / (multiple_of * unit.cost_per_rank), unit.name, unit)

    heap = [entry for entry in map(step, units) if entry is not None]
    heapq.heapify(heap)
    while heap:
        _, _, unit = heapq.heappop(heap)
        cost = multiple_of * unit.cost_per_rank
        if spent + cost > budget:
            continue  # this unit's next step does not fit; a cheaper one elsewhere may
        ranks[unit.name] += multiple_of
        spent += cost
        entry = step(unit)
        if entry is not None:
            heapq.heappush(heap, entry)
    return ranks


def budget_units(dense_model: nn.Module, dense_state: Mapping[str, torch.Tensor],
                 exclude: Sequence[str] = ()) -> List[Unit]:
    """Every factorisable group of every block of a dense Conformer/Transformer ASR model, from its
    trained weights; ``exclude`` names what stays dense: groups (``encoder.convolution``) or whole
    blocks, by their module path (``encoder.encoders.0``)."""
    from espnet_lowrank.surgery import _get_submodule_or_none, _low_rank_class

    groups = _groups()
    blocks = {"encoder": ("encoder.encoders", dense_model.encoder.encoders),
              "decoder": ("decoder.decoders", dense_model.decoder.decoders)}
    known = [f"{part}.{group}" for part, part_groups in groups.items() for group in part_groups]
    known_blocks = [f"{prefix}.{index}" for prefix, modules in blocks.values() for index in range(len(modules))]
    for name in exclude:
        if name not in known and name not in known_blocks:
            raise ValueError(f"--exclude {name} is neither a layer group ({', '.join(known)}) nor a block "
                             f"({known_blocks[0]} ... {known_blocks[-1]})")
    units = []
    for part, part_groups in groups.items():
        prefix, modules = blocks[part]
        for group, paths in part_groups.items():
            if f"{part}.{group}" in exclude:
                continue
            for index, block in enumerate(modules):
                if f"{prefix}.{index}" in exclude:
                    continue
                matrices = [
                    _low_rank_class(layer, f"{prefix}.{index}.{path}")._weight_as_matrix(
                        dense_state[f"{prefix}.{index}.{path}.weight"])
                    for path in paths if (layer := _get_submodule_or_none(block, path)) is not None
                ]
                if matrices:
                    units.append(unit_from_weights(part, group, index, matrices))
    return units


def lowrank_settings(units: Sequence[Unit], ranks: Mapping[str, int], multiple_of: int,
                     num_blocks: Mapping[str, int]) -> Dict[str, dict]:
    """``{"encoder_conf": {"lowrank_attention": {mapping: explicit, ratios: [...]}}, ...}``; a block
    without a unit in a group (excluded) gets ``null``, which keeps it dense."""
    settings: Dict[str, dict] = {}
    for unit in units:
        conf = settings.setdefault(f"{unit.part}_conf", {})
        mapping = conf.setdefault(f"lowrank_{unit.group}", {"mapping": "explicit",
                                                             "ratios": [None] * num_blocks[unit.part],
                                                             "multiple_of": multiple_of})
        mapping["ratios"][unit.block] = ranks[unit.name] / unit.full_rank
    return settings


def factorised_params(units: Sequence[Unit], ranks: Mapping[str, int]) -> int:
    return sum(ranks[unit.name] * unit.cost_per_rank for unit in units)
