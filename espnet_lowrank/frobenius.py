"""Frobenius decay (Khodak et al. 2021): decay the product ``U·V`` a layer applies, not each factor.

Training adds the gradient of (λ/2)·‖UV‖²_F: ``λ·U(VVᵀ)`` to U's and
``λ·(UᵀU)V`` to V's. Weight decay on U and V apart acts like a nuclear-norm
penalty on UV and pushes its rank down; this decays the product, as weight
decay does a dense weight. The factors of a decayed layer are marked
``_no_weight_decay``, so that ESPnet's ``exclude_weight_decay: true`` keeps the
optimiser's weight decay off them.

YAML (``encoder_conf`` and/or ``decoder_conf``)::

    lowrank_frobenius_decay: 1.0e-4
"""

import torch
from torch import nn

from espnet_lowrank.errors import InputError
from espnet_lowrank.layers import FactorPair
from espnet_lowrank.surgery import layers_to
from espnet_lowrank.validation import is_number


class FrobeniusDecayGrad(torch.autograd.Function):
    """Identity on a factor pair ``(U, V)`` whose backward adds the gradient of ``(λ/2)·‖UV‖²_F``."""

    @staticmethod
    def forward(ctx, u, v, decay):
        ctx.save_for_backward(u, v)
        ctx.decay = decay
        return u.view_as(u), v.view_as(v)

    @staticmethod
    def backward(ctx, grad_u, grad_v):
        u, v = ctx.saved_tensors
        return grad_u + ctx.decay * (u @ (v @ v.T)), grad_v + ctx.decay * ((u.T @ u) @ v), None


class FrobeniusDecay:
    """A factor transform: the applied factors pass through :class:`FrobeniusDecayGrad` in training."""

    def __init__(self, decay: float):
        self.decay = decay

    def applied(self, layer, u, v):
        if layer.training and torch.is_grad_enabled():
            return FrobeniusDecayGrad.apply(u, v, self.decay)
        return u, v

    def stored(self, layer, u, v):
        return u, v


def add_frobenius_decay(layer: FactorPair, decay: float) -> None:
    """Decay ``layer``'s ``U·V`` by ``decay`` (λ) in every training backward pass."""
    layer.register_factor_transform(FrobeniusDecay(float(decay)))
    layer.U._no_weight_decay = layer.V._no_weight_decay = True


def apply_frobenius_decay(model: nn.Module, decay: float, key: str) -> None:
    """Give every factor pair of ``model`` Frobenius decay ``decay`` (0 turns it off)."""
    if not is_number(decay) or decay < 0:
        raise InputError(f"{key}={decay!r}: must be a number ≥ 0 (0 turns it off)")
    if decay != 0:
        for layer in layers_to(model, key, "decay"):
            add_frobenius_decay(layer, decay)
