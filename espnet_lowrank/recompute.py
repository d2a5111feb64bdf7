"""A factor pair that keeps no more for the backward pass than a dense layer.

``y = U (V x) + b`` computed by autograd keeps ``x``, the hidden ``h = V x``,
``U`` and ``V``: ``h`` is activation memory a dense layer (which keeps ``x``
and ``W``) does not need. :class:`RecomputedPair` keeps ``x``, ``U`` and ``V``
only and recomputes ``h`` in the backward pass, one ``N·in·r`` GEMM more per
layer (the trade CoLA-M makes). Switched on for a whole model with
:func:`espnet_lowrank.surgery.set_recompute`; the layers' parameters and state dicts do not change.
"""

from typing import Optional

import torch
import torch.nn.functional as F


class RecomputedPair(torch.autograd.Function):
    """``F.linear(F.linear(x, v), u, bias)`` over the last dim of ``x``,
    saving ``x, u, v`` and recomputing ``F.linear(x, v)`` in the backward."""

    @staticmethod
    def forward(ctx, x, u, v, bias):
        hidden = F.linear(x, v)
        # under autocast the GEMMs ran in a lower precision: the backward's run in the same one
        ctx.compute_dtype = hidden.dtype
        ctx.save_for_backward(x, u, v)
        ctx.has_bias = bias is not None
        return F.linear(hidden, u, bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, u, v = ctx.saved_tensors
        dtype = ctx.compute_dtype
        x_c, u_c, v_c = x.to(dtype), u.to(dtype), v.to(dtype)
        grad_output = grad_output.to(dtype)
        grad_hidden = grad_output @ u_c
        rows_out = grad_output.reshape(-1, grad_output.shape[-1])
        grad_x = grad_u = grad_v = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_hidden @ v_c).to(x.dtype)
        if ctx.needs_input_grad[1]:
            hidden = F.linear(x_c, v_c)  # the recomputation
            grad_u = (rows_out.t() @ hidden.reshape(-1, hidden.shape[-1])).to(u.dtype)
        if ctx.needs_input_grad[2]:
            grad_v = (grad_hidden.reshape(-1, grad_hidden.shape[-1]).t() @ x_c.reshape(-1, x.shape[-1])).to(v.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = rows_out.sum(0)
        return grad_x, grad_u, grad_v, grad_bias


def recomputed_pair(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``u (v x) + bias`` over the last dim of ``x``, memory-lean in training."""
    if not torch.is_grad_enabled():
        return F.linear(F.linear(x, v), u, bias)
    return RecomputedPair.apply(x, u, v, bias)
