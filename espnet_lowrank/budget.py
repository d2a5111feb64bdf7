"""Ranks from a parameter budget: ``espnet-lowrank convert --param_ratio 0.5``.

Which rank each layer group of each block gets, so that the low-rank model
has ``param_ratio`` times the dense model's parameters and keeps as much of
the trained weights' spectra as it can.

The unit is one layer group in one block (say the encoder's attention in
block 3): its layers share one ratio, as the configs' explicit mappings say.
Its choices are the multiples of ``multiple_of`` below break-even (rank r
costs ``r · Σ(d_in + d_out)`` parameters and keeps the energy σ² of its
first r singular values, each layer's counted as a share of its own total,
so every layer weighs the same) and, last, staying dense: every parameter,
all the energy. At break-even U·V costs what the dense weight does while
keeping less, so a unit worth that much stays dense instead. Taking the
steepest climb in energy per parameter first, where a climb may skip to any
later choice of the unit (the next corner of its concave hull: the dense
choice often lies far above the line of the ranks before it), is the greedy
solution of this knapsack, within about one climb of the optimum (tested
against brute force); where a climb does not fit, the unit's next single
choice may. ``allocator="equal_energy"`` starts the climbs from the choices
that keep every unit the same share of its energy; ``allocator="no_slower"``
climbs as ``energy`` does over the ranks that train no slower than the unit's
dense layers, as measured by :mod:`espnet_lowrank.layer_speed`.
"""

import heapq
from dataclasses import dataclass
from typing import AbstractSet, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from espnet_lowrank.architectures import PARTS, Architecture, of_dense_module
from espnet_lowrank.errors import InputError
from espnet_lowrank.rank_mapping import break_even_rank
from espnet_lowrank.surgery import low_rank_class, submodule_or_none


def budgeted_parts(dense_model: nn.Module) -> Dict[str, Architecture]:
    """The parts of a dense model a budget may factorise, each with ours that replaces it: those whose
    class one of ours extends (:mod:`espnet_lowrank.architectures`)."""
    parts = {}
    for part in PARTS:
        module = getattr(dense_model, part, None)
        twin = of_dense_module(module) if module is not None else None
        if twin is not None:
            parts[part] = twin
    return parts


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
    modules: Tuple[str, ...] = ()  # its layers' module paths in the model

    @property
    def name(self) -> str:
        return f"{self.part}.{self.group}[{self.block}]"

    @property
    def group_name(self) -> str:
        return f"{self.part}.{self.group}"


#: Ranks are multiples of this: one number for every group, or one per group name (``encoder.attention``).
MultipleOf = Union[int, Mapping[str, int]]


def step_of(multiple_of: MultipleOf, unit: Unit) -> int:
    return multiple_of if isinstance(multiple_of, int) else multiple_of[unit.group_name]


def unit_from_weights(part: str, group: str, block: int, matrices: Sequence[torch.Tensor],
                      modules: Sequence[str] = ()) -> Unit:
    """A unit from its layers' dense weights (as ``out × in`` matrices)."""
    shares = []
    for matrix in matrices:
        squares = torch.linalg.svdvals(matrix.double()).square()
        shares.append(torch.cat([squares.new_zeros(1), squares.cumsum(0)]) / squares.sum())
    full = min(min(m.shape) for m in matrices)
    energy = torch.stack([share[: full + 1] for share in shares]).mean(0)
    return Unit(part, group, block, full, min(break_even_rank(m.shape[1], m.shape[0]) for m in matrices),
                sum(sum(m.shape) for m in matrices),
                sum(m.shape[0] * m.shape[1] for m in matrices), tuple(energy.tolist()), tuple(modules))


def choices(unit: Unit, multiple_of: int, slower: AbstractSet[int] = frozenset()) -> List[Tuple[int, int, float]]:
    """``(rank, parameters, energy kept)`` of each choice of ``unit``, cheapest first: the multiples of
    ``multiple_of`` below every one of its layers' break-even ranks but the ``slower`` ones (those it
    trains slower at than dense), then dense (its full rank)."""
    ranks = range(multiple_of, unit.full_rank, multiple_of)
    factorised = [(rank, unit_params(unit, rank), unit.energy[rank]) for rank in ranks
                  if rank < unit.break_even and rank not in slower]
    return [*factorised, (unit.full_rank, unit_params(unit, unit.full_rank), 1.0)]


def unit_params(unit: Unit, rank: int) -> int:
    """What ``unit`` costs at ``rank`` (its full rank: dense)."""
    return unit.dense_params if rank == unit.full_rank else rank * unit.cost_per_rank


def steepest_climb(options: Sequence[Tuple[int, int, float]], here: int, single: bool = False) -> Optional[int]:
    """The choice after ``here`` with the most energy gained per parameter spent (the nearest on
    ties); with ``single``, just the next one."""
    if here + 1 >= len(options):
        return None
    if single:
        return here + 1
    _, cost, energy = options[here]
    return max(range(here + 1, len(options)),
               key=lambda k: ((options[k][2] - energy) / (options[k][1] - cost), -k))


#: How a budget's ranks are chosen: ``energy`` (the default) keeps the most spectral energy in all, however
#: it falls; ``equal_energy`` first gives every unit the same share of its own energy, then spends what is
#: left as ``energy`` does. Energy per parameter starves layers whose trained spectra are still flat (the
#: feed-forward ones after a short warm-up: docs/results.md); the paper finds those the most rank-sensitive.
#: ``no_slower`` is ``energy`` without the ranks that train slower than dense at the recipe's batch.
ALLOCATORS = ("energy", "equal_energy", "no_slower")


def allocate(units: Sequence[Unit], budget: int, multiple_of: MultipleOf = 8, allocator: str = "energy",
             slower: Optional[Mapping[str, AbstractSet[int]]] = None) -> Dict[str, int]:
    """Rank per unit name (its full rank where it stays dense): Σ parameters ≤ ``budget``, every unit
    at least at its cheapest choice, energy kept as high as the greedy climbs reach (from the
    ``allocator``'s starting point). ``no_slower`` needs ``slower``: per unit name, the ranks it trains
    slower at than dense (:func:`espnet_lowrank.layer_speed.slower_ranks`)."""
    if allocator not in ALLOCATORS:
        raise InputError(f"allocator {allocator!r} is unknown; choose one of: {', '.join(ALLOCATORS)}")
    if (allocator == "no_slower") != (slower is not None):
        raise ValueError(f"allocator {allocator!r}: the ranks measured slower go with no_slower, and only there")
    slower = slower or {}
    options = {unit.name: choices(unit, step_of(multiple_of, unit), slower.get(unit.name, frozenset()))
               for unit in units}
    position = {unit.name: 0 for unit in units}
    spent = sum(options[unit.name][0][1] for unit in units)
    if spent > budget:
        slow = [unit.name for unit in units if len(options[unit.name]) == 1 and slower.get(unit.name)]
        why = (f"; {', '.join(slow)} train slower than dense at every rank here, so no_slower keeps them dense: "
               f"try --allocator energy" if slow else "")
        raise InputError(f"the budget leaves {budget:,} parameters for the factorised layers, but the cheapest "
                         f"choice everywhere (the smallest multiple_of rank, or dense where that is not smaller) "
                         f"already needs {spent:,}: ask for a larger --param_ratio{why}")
    if allocator == "equal_energy":
        position = equal_energy_start(options, budget)
        spent = sum(options[name][index][1] for name, index in position.items())

    def climb(unit: Unit, single: bool = False):
        mine, here = options[unit.name], position[unit.name]
        there = steepest_climb(mine, here, single)
        if there is None:
            return None
        slope = (mine[there][2] - mine[here][2]) / (mine[there][1] - mine[here][1])
        return (-slope, unit.name, there, unit)

    heap = [entry for entry in map(climb, units) if entry is not None]
    heapq.heapify(heap)
    while heap:
        _, name, there, unit = heapq.heappop(heap)
        cost = options[name][there][1] - options[name][position[name]][1]
        if spent + cost > budget:
            if there > position[name] + 1:  # the whole climb does not fit; its first step may
                entry = climb(unit, single=True)
                heapq.heappush(heap, entry)
            continue
        position[name] = there
        spent += cost
        entry = climb(unit)
        if entry is not None:
            heapq.heappush(heap, entry)
    return {name: options[name][index][0] for name, index in position.items()}


def equal_energy_start(options: Mapping[str, Sequence[Tuple[int, int, float]]], budget: int) -> Dict[str, int]:
    """Each unit's cheapest choice that keeps a share ``t`` of its energy, for the highest ``t`` the
    budget affords (bisection: the cost only grows with ``t``)."""
    def positions(share: float) -> Dict[str, int]:
        return {name: next(k for k, (_, _, energy) in enumerate(mine) if energy >= share)
                for name, mine in options.items()}

    def cost(position: Mapping[str, int]) -> int:
        return sum(options[name][index][1] for name, index in position.items())

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if cost(positions(middle)) <= budget else (low, middle)
    return positions(low)


def budget_units(dense_model: nn.Module, dense_state: Mapping[str, torch.Tensor],
                 exclude: Sequence[str] = ()) -> List[Unit]:
    """Every factorisable group of every block of a dense ASR model (the parts of it that
    :func:`budgeted_parts` finds), from its trained weights; ``exclude`` names what stays dense: groups (``encoder.convolution``) or whole
    blocks, by their module path (``encoder.encoders.0``)."""
    parts = budgeted_parts(dense_model)
    groups = {part: twin.groups for part, twin in parts.items()}
    blocks = {part: (f"{part}.{twin.blocks}", getattr(getattr(dense_model, part), twin.blocks))
              for part, twin in parts.items()}
    known = [f"{part}.{group}" for part, part_groups in groups.items() for group in part_groups]
    known_blocks = [f"{prefix}.{index}" for prefix, modules in blocks.values() for index in range(len(modules))]
    for name in exclude:
        if name not in known and name not in known_blocks:
            raise InputError(f"--exclude {name} is neither a layer group ({', '.join(known)}) nor a block "
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
                present = [(f"{prefix}.{index}.{path}", layer) for path in paths
                           if (layer := submodule_or_none(block, path)) is not None]
                matrices = [low_rank_class(layer, name).weight_as_matrix(dense_state[f"{name}.weight"])
                            for name, layer in present]
                if matrices:
                    units.append(unit_from_weights(part, group, index, matrices, [name for name, _ in present]))
    return units


def fixed_params(model: nn.Module, units: Sequence[Unit]) -> int:
    """The parameters of ``model`` a budget over ``units`` does not choose: everything but the units'
    layers' weights (their factors, or their dense weight; biases stay)."""
    chosen = sum(parameter.numel() for unit in units for module in unit.modules
                 for name, parameter in model.get_submodule(module).named_parameters() if name != "bias")
    return sum(parameter.numel() for parameter in model.parameters()) - chosen


def lowrank_settings(units: Sequence[Unit], ranks: Mapping[str, int], multiple_of: MultipleOf,
                     num_blocks: Mapping[str, int]) -> Dict[str, dict]:
    """``{"encoder_conf": {"lowrank_attention": {mapping: explicit, ratios: [...]}}, ...}``; a block
    that stays dense in a group (excluded, or worth its full size) gets ``null``, a group dense in
    every block no mapping."""
    settings: Dict[str, dict] = {}
    for unit in units:
        conf = settings.setdefault(f"{unit.part}_conf", {})
        mapping = conf.setdefault(f"lowrank_{unit.group}", {"mapping": "explicit",
                                                             "ratios": [None] * num_blocks[unit.part],
                                                             "multiple_of": step_of(multiple_of, unit)})
        if ranks[unit.name] < unit.full_rank:
            mapping["ratios"][unit.block] = ranks[unit.name] / unit.full_rank
    for conf in settings.values():
        for group in [group for group, mapping in conf.items() if set(mapping["ratios"]) == {None}]:
            del conf[group]
    return {part: conf for part, conf in settings.items() if conf}


def factorised_params(units: Sequence[Unit], ranks: Mapping[str, int]) -> int:
    """What the budgeted units cost, the dense ones included."""
    return sum(unit_params(unit, ranks[unit.name]) for unit in units)
