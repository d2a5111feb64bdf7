"""Rank mappings: which rank each block's factorised layers get.

One definition everywhere: **ratio = r / min(d_in, d_out)**. A mapping gives a
ratio per block; :func:`ratio_to_rank` turns it into a rank (rounded, optionally
to a multiple such as 8 for GPU tensor cores, never 0, never above full rank).

YAML form (one per layer group)::

    lowrank_attention: {mapping: linear, start: 0.25, end: 0.12, multiple_of: 8}
"""

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type

from espnet_lowrank.errors import InputError


def break_even_rank(d_in: int, d_out: int) -> float:
    """r* = d_in·d_out / (d_in + d_out): above it U·V has *more* parameters
    (and multiply-adds) than the dense ``d_out × d_in`` weight."""
    return d_in * d_out / (d_in + d_out)


def ratio_to_rank(ratio: float, d_in: int, d_out: int, multiple_of: int = 1) -> int:
    """Rank for ``ratio`` of full rank, rounded half up to ``multiple_of``."""
    full = min(d_in, d_out)
    rank = math.floor(ratio * full / multiple_of + 0.5) * multiple_of
    return max(1, min(full, max(rank, multiple_of)))


def _check_ratio(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{key}={value!r}: a rank ratio must be a number in (0, 1]")
    if not 0.0 < value <= 1.0:
        raise InputError(f"{key}={value!r}: a rank ratio must be in (0, 1]")
    return float(value)


class RankMapping(ABC):
    """Maps a block index (0-based, out of ``num_blocks``) to a rank ratio."""

    def __init__(self, key: str, multiple_of: int = 1):
        if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
            raise InputError(f"{key}.multiple_of={multiple_of!r}: must be an integer ≥ 1")
        self.key = key
        self.multiple_of = multiple_of

    @abstractmethod
    def ratios(self, num_blocks: int) -> List[Optional[float]]:
        """The ratio of every block, first to last (``None``: that block stays dense)."""


class ConstantMapping(RankMapping):
    """The same ratio in every block."""

    def __init__(self, key: str, ratio: float, multiple_of: int = 1):
        super().__init__(key, multiple_of)
        self.ratio = _check_ratio(ratio, f"{key}.ratio")

    def ratios(self, num_blocks: int) -> List[float]:
        return [self.ratio] * num_blocks


class LinearMapping(RankMapping):
    """Ratio moves linearly from ``start`` (first block) to ``end`` (last);
    either may be the larger."""

    def __init__(self, key: str, start: float, end: float, multiple_of: int = 1):
        super().__init__(key, multiple_of)
        self.start = _check_ratio(start, f"{key}.start")
        self.end = _check_ratio(end, f"{key}.end")

    def ratios(self, num_blocks: int) -> List[float]:
        if num_blocks == 1:
            return [self.start]
        step = (self.end - self.start) / (num_blocks - 1)
        return [self.start + step * block for block in range(num_blocks)]


class ExplicitMapping(RankMapping):
    """One ratio per block, written out; ``null`` keeps that block's group
    dense (a budget that spares the first block, say)."""

    def __init__(self, key: str, ratios: Sequence[Optional[float]], multiple_of: int = 1):
        super().__init__(key, multiple_of)
        if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence):
            raise InputError(f"{key}.ratios={ratios!r}: must be a list with one ratio per block")
        self.values = [None if r is None else _check_ratio(r, f"{key}.ratios[{i}]") for i, r in enumerate(ratios)]
        if all(value is None for value in self.values):
            raise InputError(f"{key}.ratios={ratios!r} keeps every block dense: set {key} to null instead")

    def ratios(self, num_blocks: int) -> List[Optional[float]]:
        if len(self.values) != num_blocks:
            raise InputError(
                f"{self.key}.ratios has {len(self.values)} entries but the model has "
                f"{num_blocks} blocks: give one ratio per block"
            )
        return list(self.values)


RANK_MAPPINGS: Dict[str, Type[RankMapping]] = {
    "constant": ConstantMapping,
    "linear": LinearMapping,
    "explicit": ExplicitMapping,
}


def build_rank_mapping(conf: Mapping[str, Any], key: str) -> RankMapping:
    """Build a mapping from its YAML dict; ``key`` names it in error messages
    (e.g. ``encoder_conf.lowrank_attention``)."""
    if not isinstance(conf, Mapping):
        raise InputError(
            f"{key}={conf!r}: expected a mapping such as "
            "{mapping: constant, ratio: 0.25}, or null for a dense group"
        )
    params = dict(conf)
    name = params.pop("mapping", None)
    if name not in RANK_MAPPINGS:
        raise InputError(
            f"{key}.mapping={name!r} is unknown; choose one of {', '.join(RANK_MAPPINGS)}"
        )
    cls = RANK_MAPPINGS[name]
    accepted = [p for p in inspect.signature(cls).parameters if p != "key"]
    for param in params:
        if param not in accepted:
            raise InputError(
                f"{key}.{param} is not an option of the {name!r} mapping; "
                f"it takes {', '.join(accepted)}"
            )
    required = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.name != "key" and p.default is inspect.Parameter.empty
    ]
    for param in required:
        if param not in params:
            raise InputError(f"{key}.{param} is required by the {name!r} mapping")
    return cls(key=key, **params)
