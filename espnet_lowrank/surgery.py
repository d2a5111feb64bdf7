"""Model surgery: swap chosen dense sub-layers of a stack of blocks for
low-rank ones, and make state-dict loading refuse checkpoints that do not fit.

The maths of a factorised layer lives in :mod:`espnet_lowrank.layers`; which
rank a block gets lives in :mod:`espnet_lowrank.rank_mapping`. This module only
finds layers by name and replaces them.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence

from torch import nn

from espnet_lowrank.layers import (
    DENSE_INITS,
    FACTOR_INITS,
    LowRankConv2d,
    LowRankLinear,
    LowRankPointwiseConv1d,
    check_choice,
)
from espnet_lowrank.rank_mapping import build_rank_mapping, ratio_to_rank


def _low_rank_class(module: nn.Module, name: str):
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
    raise ValueError(
        f"{name} is a {type(module).__name__}, which cannot be factorised: only "
        "nn.Linear, pointwise nn.Conv1d(kernel_size=1) and plain nn.Conv2d layers can"
    )


def factorize_blocks(
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
            raise ValueError(
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
            for path in groups[group]:
                dense = _get_submodule_or_none(block, path)
                if dense is None:
                    continue
                cls = _low_rank_class(dense, f"{index}.{path}")
                matrix = cls._weight_as_matrix(dense.weight)
                rank = ratio_to_rank(
                    ratios[index], matrix.shape[1], matrix.shape[0], mapping.multiple_of
                )
                _set_submodule(block, path, cls.from_dense(dense, rank, init, dense_init))
                ranks[f"{index}.{path}"] = rank
                found += 1
        if found == 0:
            raise ValueError(
                f"{key} is set but the model has no {group} layers "
                f"({', '.join(groups[group])}) to factorise"
            )
    return ranks


def _get_submodule_or_none(root: nn.Module, path: str) -> Optional[nn.Module]:
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
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLinear)]


class CheckedStateDictLoading:
    """Mixin for a module whose checkpoint must match its structure exactly.

    ESPnet loads models with ``strict=False`` and ignores the result, so a
    dense checkpoint loaded into a low-rank config (or other ranks' factors)
    would leave freshly initialised weights in place without a word. torch
    raises every message collected in ``error_msgs`` whatever ``strict`` says,
    so this records the mismatch there.
    """

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        expected = {prefix + name for name in self.state_dict(keep_vars=True)}
        given = {name for name in state_dict if name.startswith(prefix)}
        missing = sorted(expected - given)
        unexpected = sorted(given - expected)
        if missing or unexpected:
            error_msgs.append(
                f"the checkpoint does not fit this {type(self).__name__} at "
                f"'{prefix}' (a dense checkpoint, or other ranks or groups?): "
                f"missing keys [{', '.join(missing)}]; unexpected keys [{', '.join(unexpected)}]"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

