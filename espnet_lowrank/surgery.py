"""Model surgery: swap chosen dense sub-layers of a stack of blocks for
low-rank ones.

The maths of a factorised layer lives in :mod:`espnet_lowrank.layers`; which
rank a block gets lives in :mod:`espnet_lowrank.rank_mapping`; the training
aids a layer is composed with live in their own modules (``guide``,
``frobenius``, ``lr_scale``). This module only finds layers by name and
replaces them.
"""

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from espnet_lowrank.errors import InputError
from espnet_lowrank.layers import (
    DENSE_INITS,
    FACTOR_INITS,
    FactorPair,
    LowRankConv2d,
    LowRankLinear,
    LowRankPointwiseConv1d,
    spectral_factors,
)
from espnet_lowrank.rank_mapping import break_even_rank, build_rank_mapping, ratio_to_rank
from espnet_lowrank.validation import check_choice


def low_rank_class(module: nn.Module, name: str):
    """The factor pair that takes the place of the dense ``module`` (named ``name`` in errors)."""
    if isinstance(module, nn.Linear):
        return LowRankLinear
    if (
        isinstance(module, nn.Conv1d)
        and module.kernel_size == (1,)
        and module.groups == 1
        and module.stride == (1,)
        and module.dilation == (1,)
        and module.padding in ((0,), "valid")
    ):
        return LowRankPointwiseConv1d
    if (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        return LowRankConv2d
    raise InputError(
        f"{name} is a {type(module).__name__}, which cannot be factorised: only "
        "nn.Linear, pointwise nn.Conv1d(kernel_size=1) and plain nn.Conv2d layers can"
    )


def factorise_blocks(
    blocks: Sequence[nn.Module],
    groups: Mapping[str, Sequence[str]],
    settings: Mapping[str, Optional[Mapping[str, Any]]],
    init: str = "svd",
    dense_init: str = "pytorch",
    key_prefix: str = "",
) -> Dict[str, int]:
    """Replace the sub-layers of every block named in ``groups`` by low-rank ones.

    ``groups`` maps a group name to sub-layer paths inside one block
    (``"self_attn.linear_q"``); ``settings`` maps a group name to its rank
    mapping dict, or ``None`` to leave the group dense. Paths missing from a
    block (a macaron FFN that is off) are skipped. ``key_prefix`` names the
    settings in error messages. Returns ``{"<block>.<path>": rank}``.
    """
    check_choice(f"{key_prefix}init", init, FACTOR_INITS)
    check_choice(f"{key_prefix}dense_init", dense_init, DENSE_INITS)
    for group in settings:
        if group not in groups:
            raise InputError(
                f"{key_prefix}{group} is not a layer group here; "
                f"choose from {', '.join(groups)}"
            )
    ranks: Dict[str, int] = {}
    for group, conf in settings.items():
        if conf is None:
            continue
        key = f"{key_prefix}{group}"
        mapping = build_rank_mapping(conf, key)
        ratios = mapping.ratios(len(blocks))
        found = 0
        for index, block in enumerate(blocks):
            if ratios[index] is None:
                continue  # an explicit mapping keeps this block dense
            for path in groups[group]:
                dense = submodule_or_none(block, path)
                if dense is None:
                    continue
                cls = low_rank_class(dense, f"{index}.{path}")
                matrix = cls.weight_as_matrix(dense.weight)
                rank = ratio_to_rank(
                    ratios[index], matrix.shape[1], matrix.shape[0], mapping.multiple_of
                )
                warn_above_break_even(f"{key} (block {index} {path})", rank, matrix.shape[1], matrix.shape[0])
                _set_submodule(block, path, cls.from_dense(dense, rank, init, dense_init))
                ranks[f"{index}.{path}"] = rank
                found += 1
        if found == 0:
            raise InputError(
                f"{key} is set but the model has no {group} layers "
                f"({', '.join(groups[group])}) to factorise"
            )
    return ranks


def warn_above_break_even(layer: str, rank: int, d_in: int, d_out: int) -> None:
    """At or above the break-even rank, U·V costs at least what the dense
    weight does: allowed (full-rank tests use it), but rarely meant."""
    limit = break_even_rank(d_in, d_out)
    if rank >= limit:
        logging.warning(f"{layer}: rank {rank} is at or above the break-even rank {limit:.1f} of its "
                        f"{d_out}x{d_in} weight, so U·V has as many parameters as dense or more")


def submodule_or_none(root: nn.Module, path: str) -> Optional[nn.Module]:
    """The sub-module at ``path`` (``self_attn.linear_q``), or None where a block lacks it (a macaron feed-forward that is off)."""
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, new)


def low_rank_layers(model: nn.Module) -> List[tuple]:
    """``(name, layer)`` of every low-rank layer in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FactorPair)]


def set_recompute(model: nn.Module, on: bool) -> int:
    """Make every factorised linear and pointwise-conv layer of ``model`` recompute its hidden ``V x`` in
    the backward pass (:mod:`espnet_lowrank.recompute`), or stop; the number of layers switched.
    Convolutions over time and frequency (the low-rank subsampling) keep autograd's own backward."""
    layers = [m for m in model.modules() if isinstance(m, (LowRankLinear, LowRankPointwiseConv1d))]
    for layer in layers:
        layer.recompute_hidden = on
    return len(layers)


def layers_to(model: nn.Module, key: str, verb: str) -> List[FactorPair]:
    """The low-rank layers a training aid set by option ``key`` acts on; refused when there are none."""
    layers = [layer for _, layer in low_rank_layers(model)]
    if not layers:
        raise InputError(f"{key} is set but no layer group is low rank: nothing to {verb}")
    return layers


def factorise_state_dict(
    model: nn.Module, dense_state: Mapping[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """A state dict for the low-rank ``model`` made from ``dense_state``, the
    weights of the same model with every low-rank layer dense (its dense
    twin, trained): each factor pair is the truncated SVD of its layer's
    trained weight (so exact at full rank), a guide starts at that ``U·V``,
    everything else is copied. Refuses, listing them, keys that are missing
    from ``dense_state``, left unused, or of another shape."""
    layers = dict(low_rank_layers(model))
    model_state = model.state_dict()
    result: Dict[str, torch.Tensor] = {}
    used, factorised, missing, wrong_shape = set(), set(), [], []
    for key, value in model_state.items():
        module_name, _, leaf = key.rpartition(".")
        layer = layers.get(module_name)
        if layer is not None and leaf in ("U", "V", "guide"):
            if module_name not in factorised:
                factorised.add(module_name)
                source = f"{module_name}.weight"
                if source not in dense_state:
                    missing.append(source)
                    continue
                used.add(source)
                matrix = layer.weight_as_matrix(dense_state[source])
                if tuple(matrix.shape) != (layer.out_features, layer.in_features):
                    wrong_shape.append(f"{source} {tuple(dense_state[source].shape)}")
                    continue
                u, v = spectral_factors(matrix.float(), layer.rank)
                result[f"{module_name}.U"], result[f"{module_name}.V"] = u, v
                if f"{module_name}.guide" in model_state:
                    result[f"{module_name}.guide"] = u @ v
        elif key.endswith("lowrank_guide.step"):
            result[key] = value  # a converted model starts its guide schedule
        elif key not in dense_state:
            missing.append(key)
        elif dense_state[key].shape != value.shape:
            wrong_shape.append(f"{key} {tuple(dense_state[key].shape)} (expected {tuple(value.shape)})")
        else:
            result[key] = dense_state[key]
            used.add(key)
    unused = sorted(set(dense_state) - used)
    if missing or unused or wrong_shape:
        raise InputError(
            "the dense checkpoint is not this low-rank model's dense twin: "
            f"missing keys [{', '.join(missing)}]; unused keys [{', '.join(unused)}]; "
            f"other shapes [{', '.join(wrong_shape)}]"
        )
    return result


def merge_low_rank(model: nn.Module) -> nn.Module:
    """Replace every low-rank layer of ``model`` (in place) by the dense layer
    computing the same function; returns ``model``."""
    for name, layer in low_rank_layers(model):
        _set_submodule(model, name, layer.to_dense())
    return model
