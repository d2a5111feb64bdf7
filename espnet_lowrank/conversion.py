"""A trained dense model into a low-rank one: the library behind ``espnet-lowrank convert`` and the
recipe's warm-up.

The low-rank model is the one a config describes (ranks from its mappings), or, by budget, the
dense model's own config with ranks chosen to reach a share of its parameters
(:mod:`espnet_lowrank.budget`). Options the low-rank YAML leaves out (token list, feature
normalisation, ...) come from the dense run's saved ``config.yaml``. Every factor pair is the
truncated SVD of its trained dense weight, U = u·√s, V = √s·vᵀ (exact at full rank); every other
weight is copied. The dense run is read and built once per conversion, the low-rank model built
once.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import yaml
from torch import nn

from espnet_lowrank import budget, layer_speed
from espnet_lowrank.architectures import ARCHITECTURES, PARTS, Architecture, twin_of
from espnet_lowrank.atomic import atomic_write, write_text
from espnet_lowrank.errors import InputError
from espnet_lowrank.inventory import layer_rows
from espnet_lowrank.layers import FactorPair
from espnet_lowrank.model_config import build_model, count_parameters, read_config, training_options
from espnet_lowrank.model_files import load_weights
from espnet_lowrank.surgery import factorise_state_dict


@dataclass
class DenseRun:
    """A trained dense model to budget: its saved options, ours that replaces each of its parts, the
    model the options build and its weights."""

    config: Path
    values: dict
    twins: Dict[str, Architecture]
    model: nn.Module
    state: Dict[str, torch.Tensor]

    @classmethod
    def load(cls, config, weights) -> "DenseRun":
        values = read_config(config)
        twins = _budgeted_twins(config, values)
        state = load_weights(weights)  # first: a refused file stops before the model is built
        return cls(Path(config), values, twins, build_model(values, where=str(config)), state)


def lowrank_options(dense_config, config) -> dict:
    """The low-rank YAML's options over the dense run's saved ones."""
    values = read_config(dense_config)
    values.update(read_config(config))
    return values


def energy_kept(dense_state: Mapping[str, torch.Tensor], model: nn.Module) -> List[Dict]:
    """Per factor pair of ``model``: its group, rank and Σ of the kept singular values² / Σ of all."""
    rows = []
    for row in layer_rows(model):
        layer = model.get_submodule(row.module)
        matrix = layer.weight_as_matrix(dense_state[f"{row.module}.weight"]).double()
        squares = torch.linalg.svdvals(matrix).square()
        rows.append({"module": row.module, "group": f"{row.part} {row.group}", "rank": row.rank,
                     "energy": (squares[: row.rank].sum() / squares.sum()).item()})
    return rows


def write_converted(model: nn.Module, dense_state: Mapping[str, torch.Tensor], out) -> List[Dict]:
    """The low-rank ``model``'s state dict made from ``dense_state``, written to ``out`` for ESPnet's
    ``--init_param`` or ``Speech2Text``; returns :func:`energy_kept`."""
    state = factorise_state_dict(model, dense_state)
    model.load_state_dict(state, strict=True)  # the layout Speech2Text and --init_param will see
    with atomic_write(out) as partial:
        torch.save(state, partial)
    return energy_kept(dense_state, model)


def convert(dense_config, dense_model, config, out) -> List[Dict]:
    """Factorise the dense weights into the model ``config`` describes; see :func:`write_converted`."""
    dense_state = load_weights(dense_model)  # first: a refused file stops before the model is built
    model = build_model(lowrank_options(dense_config, config), where=f"{config} over {dense_config}")
    return write_converted(model, dense_state, out)


def budgeted_config(dense_config, dense_model, param_ratio: float, out_config, exclude=(),
                    multiple_of: int = 8, like=None, allocator: str = "energy",
                    timing: Optional[layer_speed.Timing] = None) -> Dict:
    """Write the low-rank config whose ranks spend ``param_ratio`` of the dense model's parameters;
    returns :func:`plan_budget`'s result."""
    values, result = plan_budget(DenseRun.load(dense_config, dense_model), param_ratio, exclude, multiple_of, like,
                                 allocator, timing)
    write_text(out_config, yaml.safe_dump(values, sort_keys=False))
    return result


def convert_by_budget(dense_config, dense_model, param_ratio: float, out, exclude=(), multiple_of: int = 8,
                      out_config=None, like=None, allocator: str = "energy",
                      timing: Optional[layer_speed.Timing] = None) -> Tuple[Path, Dict, List[Dict]]:
    """The budgeted config (``out_config``, by default ``config.yaml`` beside ``out``) and the dense
    weights converted into it; returns the config's path, :func:`plan_budget`'s result and
    :func:`energy_kept`'s rows."""
    dense = DenseRun.load(dense_config, dense_model)
    values, result = plan_budget(dense, param_ratio, exclude, multiple_of, like, allocator, timing)
    config = Path(out_config) if out_config else Path(out).with_name("config.yaml")
    write_text(config, yaml.safe_dump(values, sort_keys=False))
    return config, result, write_converted(build_model(values, where=str(config)), dense.state, out)


def plan_budget(dense: DenseRun, param_ratio: float, exclude: Sequence[str] = (), multiple_of: int = 8,
                like=None, allocator: str = "energy",
                timing: Optional[layer_speed.Timing] = None) -> Tuple[dict, Dict]:
    """The low-rank training options whose ranks spend ``param_ratio`` of the dense model's parameters,
    and the ranks and parameter counts (with the ``no_slower`` allocator also the ranks at which each
    unit trained slower than dense: ``timing`` says where and on which batch it is measured).

    With ``like`` (a low-rank training YAML), the budget factorises only the layers that config
    factorises, with its groups' ``multiple_of``, and keeps its other settings (initialisation,
    subsampling, ...): its mappings give way to the chosen explicit ones. Without it, every group
    but ``exclude`` is budgeted, in multiples of ``multiple_of``."""
    if not 0 < param_ratio < 1:
        raise InputError(f"--param_ratio {param_ratio}: the low-rank model's size relative to the dense one, in (0, 1)")
    twins = dense.twins
    units = budget.budget_units(dense.model, dense.state, exclude)
    values = dict(dense.values)
    shaped = dense.model  # every budgeted layer is dense there
    if like is not None:
        values.update(read_config(like))
        shaped = build_model(values, where=f"{like} over {dense.config}")
        units = [unit for unit in units
                 if all(isinstance(shaped.get_submodule(module), FactorPair) for module in unit.modules)]
        multiple_of = {unit.group_name: _mapping(values, unit).get("multiple_of", 1) for unit in units}
        for unit in units:  # its mappings give way to the explicit ones below
            values[f"{unit.part}_conf"].pop(f"lowrank_{unit.group}", None)
    if not units:
        groups = [f"{part}.{group}" for part, twin in twins.items() for group in twin.groups]
        raise InputError(f"{like}: factorises none of the layers a budget chooses ranks for ({', '.join(groups)})")
    fixed = budget.fixed_params(shaped, units)
    dense_params = count_parameters(dense.model)
    target = round(param_ratio * dense_params)
    slower = None
    if allocator == "no_slower":
        timing = timing or layer_speed.Timing()
        shapes = layer_speed.recipe_inputs(dense.model, dense.values, [m for unit in units for m in unit.modules],
                                           timing.shape_files)
        slower = layer_speed.slower_ranks(dense.model, units, shapes, multiple_of, timing.probe(dense.values))
    ranks = budget.allocate(units, target - fixed, multiple_of, allocator, slower)
    num_blocks = {part: len(getattr(getattr(dense.model, part), twin.blocks)) for part, twin in twins.items()}
    for conf, settings in budget.lowrank_settings(units, ranks, multiple_of, num_blocks).items():
        values[conf] = {**values[conf], **settings}
    for part, twin in twins.items():
        values[part] = twin.choice
    values.pop("config", None)  # it was the dense run's YAML
    result = {"ranks": ranks, "units": units, "dense_params": dense_params, "target_params": target,
              "params": fixed + budget.factorised_params(units, ranks), "slower": slower,
              "steps": {unit.name: budget.step_of(multiple_of, unit) for unit in units}}
    return training_options(values), result  # so that run.sh --init_param can train on from it


def _budgeted_twins(config, values: Mapping) -> Dict[str, Architecture]:
    """Per part the dense run has, ours that replaces it; refuses a part none of ours extends."""
    twins = {}
    for part in PARTS:
        choice = values.get(part)
        if choice is None:
            continue
        twin = twin_of(part, choice)
        if twin is None:
            known = [f"{a.dense_choice} (into {a.choice})" for a in ARCHITECTURES if a.part == part]
            raise InputError(f"{config}: {part}: {choice!r}; a budget converts a dense {part}: "
                             f"{' or '.join(known)}")
        twins[part] = twin
    return twins


def _mapping(values: Mapping, unit: budget.Unit) -> Dict:
    mapping = values[f"{unit.part}_conf"].get(f"lowrank_{unit.group}")
    return mapping if isinstance(mapping, dict) else {}
