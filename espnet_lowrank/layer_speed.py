"""Which ranks of a layer train no slower than the dense layer they replace, at the batch a recipe trains on.

Low rank saves multiply-adds, not necessarily time: ``U (V x)`` is two thinner matrix products where
dense is one, with one more activation to keep for the backward pass, and on a GPU at small batches
the launches, not the arithmetic, set the pace (docs/benchmarks.md). So the budget's ``no_slower``
allocator (:mod:`espnet_lowrank.budget`) asks the machine: each layer is timed, forward and backward,
dense and at each candidate rank, on inputs of the very shape it sees in the recipe's batch (one
forward pass of the dense model records them), on the device training will use.
"""

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from espnet_lowrank.surgery import low_rank_class


def timed(function: Callable[[], None], device: str) -> float:
    """Wall seconds of one call, the device's queued work included."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@dataclass(frozen=True)
class Probe:
    """How layers are timed: where, in which precision, how many times (the median counts)."""

    device: str = "cpu"
    amp: bool = False  # ESPnet's use_amp: fp16 autocast on CUDA
    repeats: int = 5
    warmup: int = 2

    def autocast(self):
        if self.amp and self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


@dataclass(frozen=True)
class Timing:
    """Where the ``no_slower`` budget times its layers: the recipe's shape files (empty: uniform 12 s
    utterances) and the device training uses."""

    shape_files: Tuple[str, ...] = ()
    device: str = "cuda" if torch.cuda.is_available() else "cpu"

    def probe(self, config: Mapping) -> Probe:
        """The probe for a training ``config``: its precision is the one timed."""
        return Probe(self.device, amp=bool(config.get("use_amp")))


def layer_inputs(model: nn.Module, batch: Mapping[str, torch.Tensor], modules: Sequence[str]) -> Dict[str, torch.Size]:
    """The input shape each of ``modules`` gets in one forward pass of ``model`` over ``batch``."""
    shapes: Dict[str, torch.Size] = {}

    def record(name):
        def hook(module, args):
            shapes.setdefault(name, args[0].shape)  # returns nothing: the input goes on unchanged
        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in modules]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    missing = [name for name in modules if name not in shapes]
    if missing:
        raise ValueError(f"no input reached {', '.join(missing)} in a forward pass of the model")
    return shapes


def recipe_inputs(model: nn.Module, config: Mapping, modules: Sequence[str],
                  shape_files: Sequence[str] = ()) -> Dict[str, torch.Size]:
    """:func:`layer_inputs` over the middle batch ESPnet's sampler builds for the training ``config``
    from the recipe's ``shape_files`` (its stats dir's ``train/speech_shape`` and
    ``train/text_shape.<token_type>``; without them, uniform 12 s utterances of 40 tokens)."""
    from espnet_lowrank.recipe_batch import config_batch, synthetic_batch

    speech_lengths, text_lengths = config_batch(config, model.vocab_size, shape_files=shape_files)
    batch = synthetic_batch(0, 0.0, 0, model.vocab_size, "cpu", speech_lengths, text_lengths)
    return layer_inputs(model, batch, modules)


def step_seconds(layer: nn.Module, shape: torch.Size, probe: Probe) -> float:
    """Median seconds of one forward and backward pass of ``layer`` on an input of ``shape`` (its
    gradient as well as its weights', as inside a network)."""
    layer = layer.to(probe.device).train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(probe.device).requires_grad_()
    with probe.autocast():
        grad = torch.randn(layer(x).shape, generator=generator).to(probe.device)

    def step():
        with probe.autocast():
            out = layer(x)
        out.backward(grad.to(out.dtype))
        x.grad = None
        for parameter in layer.parameters():
            parameter.grad = None

    for _ in range(probe.warmup):
        step()
    return statistics.median(timed(step, probe.device) for _ in range(probe.repeats))


def slower_ranks(model: nn.Module, units, shapes: Mapping[str, torch.Size], multiple_of,
                 probe: Probe) -> Dict[str, FrozenSet[int]]:
    """Per unit name (:class:`espnet_lowrank.budget.Unit`), those of its factorised ranks at which its
    layers together train slower than its dense layers. Every candidate is timed: time need not grow
    with rank (on 2 CPU cores a 256×1024 layer stepped slower at rank 8 than at 64: docs/results.md)."""
    from espnet_lowrank.budget import choices, step_of

    cache: Dict[Tuple, float] = {}

    def seconds(module: str, rank: Optional[int]) -> float:
        dense = model.get_submodule(module)
        low_rank = low_rank_class(dense, module)
        key = (low_rank.__name__, tuple(low_rank.weight_as_matrix(dense.weight).shape), tuple(shapes[module]), rank)
        if key not in cache:
            layer = copy.deepcopy(dense) if rank is None else low_rank.from_dense(dense, rank, init="random")
            cache[key] = step_seconds(layer, shapes[module], probe)
        return cache[key]

    found = {}
    for unit in units:
        dense = sum(seconds(module, None) for module in unit.modules)
        found[unit.name] = frozenset(rank for rank, _, _ in choices(unit, step_of(multiple_of, unit))[:-1]
                                     if sum(seconds(module, rank) for module in unit.modules) > dense)
    return found
