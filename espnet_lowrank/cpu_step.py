"""A cheaper CPU training step that computes the same model.

Two kinds of work that dense and low-rank Conformers share outweighed their matrix products in an
eager bf16 step on a CPU (docs/benchmarks.md, "bf16 on a CPU"):

* **the subsampling's 2-D convolutions** run in NCHW layout, which oneDNN reorders on every call;
  with channels-last weights it runs them without reordering (the same sums, in another order);
* **dropout masks**: ``torch.nn.Dropout`` draws them with ``bernoulli_``, element by element from
  the serial Mersenne Twister, then multiplies in further passes. Thresholding ``torch.rand``
  draws the same Bernoulli(1 − p) keep masks (to float32's 2⁻²⁴ resolution of p) from the same
  seeded generator in about half the time, and saves the same boolean mask for backward. Only
  the random stream differs, so a seed's run is no longer the one native dropout gives.

``--cpu_step`` picks: ``fast`` (both), ``channels_last`` (the layout alone: a seed's run as with
stock ESPnet, up to rounding) or ``stock``. A CUDA training is left alone: its fused dropout
kernel is faster than anything built from separate ones, and its layouts are unmeasured here.
"""

from typing import List

import torch

#: the values of ``--cpu_step``
SETTINGS = ("fast", "channels_last", "stock")
#: what a training and ``bench`` do unless told otherwise
DEFAULT = "fast"


def chosen(setting: str, device: str) -> str:
    """What a training on ``device`` (``cpu`` or ``cuda``) does with ``--cpu_step setting``."""
    return setting if device == "cpu" else "stock"


def apply(model: torch.nn.Module, setting: str) -> List[str]:
    """Make ``model``'s training steps cheaper as ``setting`` says; what was done, for the log."""
    done = []
    if setting in ("fast", "channels_last"):
        done.append(f"{channels_last_convolutions(model)} 2-D convolutions run channels-last")
    if setting == "fast":
        done.append(f"{use_uniform_masks(model)} dropout layers draw their masks from torch.rand")
    return done


def channels_last_convolutions(model: torch.nn.Module) -> int:
    """Every ``Conv2d``'s weight in channels-last layout; returns how many. The parameters stay the
    same objects (an optimiser built before keeps them) and a state dict saves and loads as before."""
    convolutions = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    for convolution in convolutions:
        convolution.to(memory_format=torch.channels_last)
    return len(convolutions)


class _MaskedScale(torch.autograd.Function):
    """``x · keep / (1 − p)``, saving only the boolean mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


class UniformMaskDropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` drawing its keep mask as ``torch.rand(...) >= p``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.p == 1.0 or self.inplace:
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return _MaskedScale.apply(x, keep, 1.0 / (1.0 - self.p))


def use_uniform_masks(model: torch.nn.Module) -> int:
    """Every ``torch.nn.Dropout`` in ``model`` becomes a :class:`UniformMaskDropout` of the same p
    (dropout holds no weights: the state dict is unchanged); returns how many."""
    count = 0
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is torch.nn.Dropout:
                setattr(module, name, UniformMaskDropout(child.p, child.inplace).train(child.training))
                count += 1
    return count
