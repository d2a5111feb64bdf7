"""A learning-rate multiplier for the factors that needs no change to ESPnet's optimiser.

The factors are stored divided by ``scale`` and multiplied back in the forward
pass: the function, the state dict (it holds the applied factors) and the
gradients with respect to the applied factors stay the same, but an Adam-type
optimiser, whose step is ``lr`` per stored entry whatever the gradient's size,
moves the applied factors ``scale`` times as far (SGD: ``scale²``).

YAML (``encoder_conf`` and/or ``decoder_conf``)::

    lowrank_lr_scale: 1.5
"""

from typing import Optional

import torch
from torch import nn

from espnet_lowrank.errors import InputError
from espnet_lowrank.layers import FactorPair
from espnet_lowrank.surgery import layers_to
from espnet_lowrank.validation import is_number


class FactorScale:
    """A factor transform: stored factors = applied factors / ``scale``."""

    def __init__(self, scale: float):
        self.scale = scale
        self.handle = None  # removes it from its layer

    def applied(self, layer, u, v):
        return u * self.scale, v * self.scale

    def stored(self, layer, u, v):
        return u / self.scale, v / self.scale


def _scale_of(layer: FactorPair) -> Optional[FactorScale]:
    return next((t for t in layer.factor_transforms() if isinstance(t, FactorScale)), None)


def lr_scale(layer: FactorPair) -> float:
    """The scale a layer's factors are stored with (1: none)."""
    transform = _scale_of(layer)
    return 1.0 if transform is None else transform.scale


def set_lr_scale(layer: FactorPair, scale: float) -> None:
    """Store ``layer``'s factors divided by ``scale`` from now on, applying the same ``U·V``."""
    if not is_number(scale) or scale <= 0:
        raise InputError(f"lr_scale={scale!r}: must be a number > 0")
    u, v = (f.detach().clone() for f in layer.factors())
    old = _scale_of(layer)
    if old is not None:
        old.handle.remove()
    else:  # checkpoints hold the applied factors, whatever the scale
        layer._register_state_dict_hook(_applied_into_state_dict)
        layer._register_load_state_dict_pre_hook(_stored_from_state_dict, with_module=True)
    transform = FactorScale(float(scale))
    # first, so that every other transform (Frobenius decay) sees the applied factors
    transform.handle = layer.register_factor_transform(transform, prepend=True)
    layer.set_factors(u, v)


def apply_lr_scale(model: nn.Module, scale: float, key: str) -> None:
    """Multiply the effective learning rate of every factor pair of ``model``
    by ``scale`` (Adam-type optimisers)."""
    if not is_number(scale) or scale <= 0:
        raise InputError(f"{key}={scale!r}: must be a number > 0 (1 leaves the factors' learning rate as is)")
    if scale != 1:
        for layer in layers_to(model, key, "scale"):
            set_lr_scale(layer, scale)


def _applied_into_state_dict(module, state_dict, prefix, local_metadata) -> None:
    scale = lr_scale(module)
    for name in ("U", "V"):
        state_dict[prefix + name] = state_dict[prefix + name] * scale


@torch.no_grad()
def _stored_from_state_dict(module, state_dict, prefix, *args) -> None:
    scale = lr_scale(module)
    for name in ("U", "V"):
        if prefix + name in state_dict:
            state_dict[prefix + name] = state_dict[prefix + name] / scale
