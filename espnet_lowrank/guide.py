"""Guided training: a dense guide per factorised layer, faded out over training.

Every factorised layer of an encoder or decoder gets a dense guide W that
starts at its ``U·V`` and outputs ``α·Wx + (1−α)·U(Vx)``; α falls from 1 to 0
over ``steps`` training batches (``cosine`` or ``linear``), or stays 1 for
``steps`` batches and then drops to 0 (``switch``: a dense warm-up inside one
training run, after which the factors restart as the truncated SVD of the
trained guide, as Pufferfish does between runs). From α = 0 on the
guides are gone: no dense path is computed, and the state dict (so every
checkpoint written from then on, ``valid.acc.ave.pth`` and the pack included)
holds plain low rank. The position in the schedule is a buffer of the
encoder/decoder, so ``--resume`` continues it, and a model built from the
training config loads a guide-free checkpoint because that buffer says the
schedule is over.

YAML (``encoder_conf`` and/or ``decoder_conf``)::

    lowrank_guide: {steps: 800, schedule: cosine}   # or linear, or switch
"""

import math
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from espnet_lowrank.errors import InputError
from espnet_lowrank.layers import FactorPair, spectral_factors
from espnet_lowrank.surgery import layers_to
from espnet_lowrank.validation import check_choice

GUIDE_SCHEDULES = ("cosine", "linear", "switch")


class DenseGuide:
    """A layer's blend (:class:`espnet_lowrank.layers.Blend`) while it is guided: the output is
    ``α·Wx + (1−α)·U(Vx)`` with the dense guide W, the layer's parameter ``guide`` (so checkpoints
    name it ``<layer>.guide``). At α = 1 the factors wait: they get no gradient, so no optimiser
    state either."""

    def __init__(self):
        self.alpha = 1.0

    def output(self, layer, x, u, v):
        alpha = self.alpha
        if alpha == 0.0:
            return layer.apply_factors(x, u, v, layer.bias)
        if alpha == 1.0:
            return layer.apply_matrix(x, layer.guide, layer.bias)
        return layer.apply_matrix(x, alpha * layer.guide, layer.bias) + layer.apply_factors(x, (1 - alpha) * u, v, None)

    def matrix(self, layer, u, v):
        return self.alpha * layer.guide + (1 - self.alpha) * (u @ v)

    @torch.no_grad()
    def restart(self, layer) -> None:
        """The factors were drawn anew (ESPnet's ``--init``): the guide starts at their ``U·V`` again."""
        u, v = layer.factors()
        layer.guide.copy_(u @ v)


def add_guide(layer: FactorPair) -> None:
    """Give ``layer`` a dense guide W that starts at its ``U·V``, at α = 1 (self-guided training,
    Wei et al. 2024): the dense path carries the function while the factors, trained jointly,
    learn to take it over as α falls to 0."""
    u, v = layer.factors()
    layer.guide = nn.Parameter((u @ v).detach().clone())
    layer.blend = DenseGuide()


def drop_guide(layer: FactorPair) -> None:
    """Remove the guide: the layer is plain low rank again, in its computation and its state dict."""
    del layer.guide
    layer.blend = None


def layer_guide(layer: FactorPair) -> Optional[DenseGuide]:
    """The layer's guide while it has one, else None."""
    return layer.blend if isinstance(layer.blend, DenseGuide) else None


def guide_alpha(step: int, steps: int, schedule: str) -> float:
    """Weight of the dense path after ``step`` training batches."""
    if step >= steps:
        return 0.0
    if schedule == "switch":
        return 1.0
    progress = step / steps
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


class GuideSchedule(nn.Module):
    """Counts training batches and fades the guides of ``layers`` out.

    The layers are not submodules (they belong to their blocks): the
    schedule only sets their α and drops their guides when it ends.
    """

    def __init__(self, layers: Sequence[FactorPair], steps: int, schedule: str = "cosine"):
        super().__init__()
        self.steps = steps
        self.schedule = schedule
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._layers = list(layers)
        for layer in self._layers:
            add_guide(layer)

    @property
    def alpha(self) -> float:
        return guide_alpha(int(self.step), self.steps, self.schedule)

    @property
    def finished(self) -> bool:
        return int(self.step) >= self.steps

    def sync(self) -> None:
        """Give every layer the current α; drop the guides once it is 0 (a
        ``switch`` schedule first restarts the factors from its guide)."""
        alpha = self.alpha
        for layer in self._layers:
            guide = layer_guide(layer)
            if guide is None:
                continue
            if alpha == 0.0:
                if self.schedule == "switch":
                    layer.set_factors(*spectral_factors(layer.guide.detach(), layer.rank))
                drop_guide(layer)
            else:
                guide.alpha = alpha

    def before_forward(self, training: bool) -> None:
        """Called before each forward of the owner: a training batch uses the
        current α, then counts (the counter stops at ``steps``)."""
        self.sync()
        if training and not self.finished:
            self.step += 1

    def finish(self) -> None:
        """Jump to the end of the schedule (the guides go)."""
        self.step.fill_(self.steps)
        self.sync()

    def match_checkpoint(self, step: Optional[torch.Tensor]) -> None:
        """Before loading a state dict whose schedule is at ``step``: a
        finished schedule's checkpoint holds no guides (drop ours), an
        unfinished one holds them (give them back if they were dropped)."""
        if step is None:
            return  # not a guided checkpoint: the key check names what is missing
        self.step.fill_(min(int(step), self.steps))
        for layer in self._layers:
            if self.finished and layer_guide(layer) is not None:
                drop_guide(layer)  # the checkpoint holds the factors that replaced it
            elif not self.finished and layer_guide(layer) is None:
                add_guide(layer)
        self.sync()

    def extra_repr(self) -> str:
        return f"steps={self.steps}, schedule={self.schedule}, step={int(self.step)}"


def finish_guides(model: nn.Module) -> nn.Module:
    """End every guide schedule in ``model``: the model as it is decoded."""
    for module in model.modules():
        if getattr(module, "lowrank_guide", None) is not None:
            module.lowrank_guide.finish()
    return model


def check_guide_conf(conf: Any, key: str) -> Optional[Mapping[str, Any]]:
    """Validate ``lowrank_guide`` (``null`` or ``{steps: N, schedule: ...}``)."""
    if conf is None:
        return None
    if not isinstance(conf, Mapping):
        raise InputError(f"{key}={conf!r}: expected {{steps: N, schedule: cosine|linear}} or null")
    for name in conf:
        if name not in ("steps", "schedule"):
            raise InputError(f"{key}.{name} is not an option of the guide; it takes steps, schedule")
    steps = conf.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"{key}.steps={steps!r}: the number of training batches, an integer ≥ 1")
    check_choice(f"{key}.schedule", conf.get("schedule", "cosine"), GUIDE_SCHEDULES)
    return conf


class GuidedTraining:
    """Mixin for an encoder/decoder whose factorised layers may be guided.

    :meth:`attach_guide` is called once the layers are factorised; it adds the
    schedule as ``lowrank_guide`` (its step is ``<prefix>lowrank_guide.step``
    in the state dict) and a hook that advances it before every forward.
    Must come before :class:`CheckedStateDictLoading` in the bases, so that a
    finished schedule drops the guides before the keys are checked.
    """

    def attach_guide(self, conf: Optional[Mapping[str, Any]], key: str) -> None:
        conf = check_guide_conf(conf, key)
        if conf is None:
            self.lowrank_guide = None
            return
        layers = layers_to(self, key, "guide")
        self.lowrank_guide = GuideSchedule(layers, conf["steps"], conf.get("schedule", "cosine"))
        self.register_forward_pre_hook(_advance_guide)
        self.register_load_state_dict_post_hook(_sync_guide)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if getattr(self, "lowrank_guide", None) is not None:
            self.lowrank_guide.match_checkpoint(state_dict.get(prefix + "lowrank_guide.step"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _advance_guide(module, inputs) -> None:
    module.lowrank_guide.before_forward(module.training and torch.is_grad_enabled())


def _sync_guide(module, incompatible_keys) -> None:
    module.lowrank_guide.sync()
