"""Low-rank layers: W = U·V, trained as two factors.

One shared core (:class:`LowRankLinear`) owns the factors, their spectral
initialisation, merging back to a dense weight and the cost counts. The
Conformer's pointwise ``Conv1d(kernel_size=1)`` is the same matrix applied
channels-first, and a ``Conv2d`` is the matrix ``out × (in·kh·kw)`` applied to
every patch, so their twins only change how a matrix is applied and how a
dense weight is shaped.

The training aids are not here: each is a small piece in its own module that a
layer is composed with, through two extension points (as torch's own hooks are):

- a *factor transform* (:meth:`LowRankLinear.register_factor_transform`) sits
  between the stored parameters and the factors the layer applies
  (:mod:`espnet_lowrank.lr_scale` stores them scaled,
  :mod:`espnet_lowrank.frobenius` adds the decay's gradient);
- a *blend* (:attr:`LowRankLinear.blend`) mixes a dense path into the output
  (:mod:`espnet_lowrank.guide`).
"""

import math
from collections import OrderedDict
from typing import Optional, Protocol, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair
from torch.utils.hooks import RemovableHandle

from espnet_lowrank.errors import InputError
from espnet_lowrank.recompute import recomputed_pair
from espnet_lowrank.validation import check_choice

#: Dense initialisations a factor pair can be spectrally initialised from.
#: ``pytorch`` is torch's own default for ``nn.Linear``/``nn.Conv1d`` (what a
#: model gets when ESPnet's ``init`` is ``none``); the others mirror ESPnet's
#: ``--init`` choices so a low-rank model can start from the same dense
#: distribution as its dense twin.
DENSE_INITS = (
    "pytorch",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "normal",
)
#: How the factors start: ``svd`` truncates the SVD of a dense random matrix
#: (the paper's spectral init); ``random`` draws each factor on its own.
FACTOR_INITS = ("svd", "random")

Factors = Tuple[torch.Tensor, torch.Tensor]


def draw_dense_weight(out_features: int, in_features: int, scheme: str) -> torch.Tensor:
    """A fresh dense ``out × in`` weight drawn the way ``scheme`` says."""
    weight = torch.empty(out_features, in_features)
    if scheme == "pytorch":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight)
    elif scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, nonlinearity="relu")
    elif scheme == "kaiming_normal":
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
    elif scheme == "normal":
        nn.init.normal_(weight, mean=0.0, std=0.02)
    else:
        check_choice("dense_init", scheme, DENSE_INITS)
    return weight


def spectral_factors(weight: torch.Tensor, rank: int) -> Factors:
    """Best rank-``rank`` factors ``U (out×r)``, ``V (r×in)`` of ``weight``.

    Truncated SVD with √S given to both sides, so the factors start balanced
    (``UᵀU = VVᵀ = S``) and get gradients of the same scale.
    """
    left, singular, right_t = torch.linalg.svd(weight.double(), full_matrices=False)
    root = singular[:rank].sqrt()
    u = left[:, :rank] * root
    v = root[:, None] * right_t[:rank]
    return u.to(weight.dtype), v.to(weight.dtype)


class FactorTransform(Protocol):
    """Between a layer's stored parameters and the factors it applies."""

    def applied(self, layer: "FactorPair", u: torch.Tensor, v: torch.Tensor) -> Factors:
        """The factors as applied, from the stored ones (in the forward pass)."""

    def stored(self, layer: "FactorPair", u: torch.Tensor, v: torch.Tensor) -> Factors:
        """The inverse: what to store for the layer to apply ``u·v``."""


class Blend(Protocol):
    """A dense path mixed into a layer's output."""

    def output(self, layer: "FactorPair", x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The layer's output, given its input and applied factors."""

    def matrix(self, layer: "FactorPair", u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The ``out × in`` matrix the layer applies with this blend (for merging)."""

    def restart(self, layer: "FactorPair") -> None:
        """Called after the layer's factors were drawn anew."""


class FactorPair(nn.Module):
    """``y = U (V x) + b`` with ``V: r × in`` and ``U: out × r``: the core every low-rank layer shares
    (its maths over the last dimension is ``nn.Linear``'s; the twins below change the layout).

    Above the break-even rank ``in·out / (in + out)`` it has *more* parameters than the dense layer.
    """

    #: recompute ``V x`` in the backward pass instead of keeping it (:mod:`espnet_lowrank.recompute`)
    recompute_hidden = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        init: str = "svd",
        dense_init: str = "pytorch",
    ):
        super().__init__()
        full_rank = min(in_features, out_features)
        if not 1 <= rank <= full_rank:
            raise InputError(
                f"rank={rank} is out of range for a {out_features}×{in_features} "
                f"weight: it must be between 1 and {full_rank}"
            )
        check_choice("init", init, FACTOR_INITS)
        check_choice("dense_init", dense_init, DENSE_INITS)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.init = init
        self.dense_init = dense_init
        self.V = nn.Parameter(torch.empty(rank, in_features))
        self.U = nn.Parameter(torch.empty(out_features, rank))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self._factor_transforms: "OrderedDict[int, FactorTransform]" = OrderedDict()
        #: a dense path mixed into the output, or None (see :class:`Blend`)
        self.blend: Optional[Blend] = None
        self.reset_parameters()

    # -- the factors ----------------------------------------------------------
    def factors(self) -> Factors:
        """``(U, V)`` as the layer applies them: the stored parameters through
        every factor transform, in order."""
        u, v = self.U, self.V
        for transform in self._factor_transforms.values():
            u, v = transform.applied(self, u, v)
        return u, v

    @torch.no_grad()
    def set_factors(self, u: torch.Tensor, v: torch.Tensor) -> None:
        """Make the layer apply ``u·v``."""
        for transform in reversed(self._factor_transforms.values()):
            u, v = transform.stored(self, u, v)
        self.U.copy_(u)
        self.V.copy_(v)

    def factor_transforms(self) -> Tuple[FactorTransform, ...]:
        """The factor transforms, in the order the forward pass applies them."""
        return tuple(self._factor_transforms.values())

    def register_factor_transform(self, transform: FactorTransform, prepend: bool = False) -> RemovableHandle:
        """Put ``transform`` between the stored parameters and the applied
        factors, last (or first, with ``prepend``); the handle removes it."""
        handle = RemovableHandle(self._factor_transforms)
        self._factor_transforms[handle.id] = transform
        if prepend:
            self._factor_transforms.move_to_end(handle.id, last=False)
        return handle

    # -- initialisation -------------------------------------------------------
    def reset_parameters(self) -> None:
        self.reset_factors()
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def reset_factors(self) -> None:
        """Initialise U and V as ``init`` says (the bias is left alone)."""
        if self.init == "svd":
            dense = draw_dense_weight(self.out_features, self.in_features, self.dense_init)
            u, v = spectral_factors(dense, self.rank)
        else:
            u, v = torch.empty_like(self.U), torch.empty_like(self.V)
            nn.init.kaiming_uniform_(u, a=math.sqrt(5))
            nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        self.set_factors(u, v)

    def espnet_initialization_fn(self) -> None:
        """Called by ESPnet's ``initialize()`` after ``--init`` has overwritten
        U and V independently, which breaks the spectral init: redo it. The
        bias keeps the value ``--init`` gave it."""
        self.reset_factors()
        if self.blend is not None:
            self.blend.restart(self)

    # -- conversion from and to dense -----------------------------------------
    @classmethod
    def from_dense(
        cls, dense: nn.Module, rank: int, init: str = "svd", dense_init: str = "pytorch"
    ) -> "FactorPair":
        """Replace a dense layer: with ``init='svd'`` its own weight is
        factorised (so full rank reproduces it), with ``random`` only its
        shape and bias are kept."""
        check_choice("init", init, FACTOR_INITS)
        matrix = cls.weight_as_matrix(dense.weight.detach())
        # built with the cheap random init, then given the dense layer's own
        # factors: drawing and factorising a fresh dense matrix would be wasted
        layer = cls._shaped_like(dense, rank, dense_init)
        layer.init = init  # what a later re-initialisation (ESPnet's --init) redoes
        layer.to(device=matrix.device, dtype=matrix.dtype)
        with torch.no_grad():
            if init == "svd":
                layer.set_factors(*spectral_factors(matrix, rank))
            if dense.bias is not None:
                layer.bias.copy_(dense.bias)
        return layer

    @classmethod
    def _shaped_like(cls, dense: nn.Module, rank: int, dense_init: str) -> "FactorPair":
        """A randomly initialised layer of ``dense``'s shape."""
        out_features, in_features = cls.weight_as_matrix(dense.weight).shape
        return cls(in_features, out_features, rank, dense.bias is not None, "random", dense_init)

    def to_dense_weight(self) -> torch.Tensor:
        """The weight this layer applies, shaped like the dense layer's."""
        u, v = self.factors()
        matrix = u @ v if self.blend is None else self.blend.matrix(self, u, v)
        return self.matrix_as_weight(matrix)

    def to_dense(self) -> nn.Module:
        """A dense layer computing the same function (for export or checks)."""
        dense = self._make_dense()
        dense.to(device=self.U.device, dtype=self.U.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.to_dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def _make_dense(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)

    @staticmethod
    def weight_as_matrix(weight: torch.Tensor) -> torch.Tensor:
        """A dense layer's weight as the ``out × in`` matrix the factors approximate."""
        return weight

    def matrix_as_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix

    # -- cost -----------------------------------------------------------------
    def num_parameters(self) -> int:
        bias = self.out_features if self.bias is not None else 0
        return self.rank * (self.in_features + self.out_features) + bias

    def dense_num_parameters(self) -> int:
        bias = self.out_features if self.bias is not None else 0
        return self.in_features * self.out_features + bias

    def macs_per_position(self) -> int:
        """Multiply-adds for one output position (a frame, a token, or one
        pixel of a convolution's output)."""
        return self.rank * (self.in_features + self.out_features)

    def dense_macs_per_position(self) -> int:
        return self.in_features * self.out_features

    # -- compute --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.factors()
        if self.blend is not None:
            return self.blend.output(self, x, u, v)
        return self.apply_factors(x, u, v, self.bias)

    def apply_factors(self, x, u, v, bias):
        """``u (v x) + bias`` in this layer's form."""
        if self.recompute_hidden:
            return recomputed_pair(x, u, v, bias)
        return F.linear(F.linear(x, v), u, bias)

    def apply_matrix(self, x, matrix, bias):
        """``matrix x + bias`` in this layer's form, for an ``out × in`` matrix."""
        return F.linear(x, matrix, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}, init={self.init}"
        )


class LowRankLinear(FactorPair):
    """A drop-in for ``nn.Linear``: the core's own form."""


class LowRankPointwiseConv1d(FactorPair):
    """Channels-first twin of :class:`LowRankLinear` for ``Conv1d(k=1)``:
    input and output are ``(batch, channels, time)``."""

    def _make_dense(self) -> nn.Module:
        return nn.Conv1d(
            self.in_features, self.out_features, kernel_size=1, bias=self.bias is not None
        )

    @staticmethod
    def weight_as_matrix(weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() != 3 or weight.shape[-1] != 1:
            raise ValueError(
                f"a pointwise Conv1d weight is (out, in, 1); got {tuple(weight.shape)}"
            )
        return weight[..., 0]

    def matrix_as_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.unsqueeze(-1)

    def apply_factors(self, x, u, v, bias):
        # two matmuls over the channels of a channels-last view: as two k=1 convolutions the pair stepped
        # slower than the dense convolution on CPU (docs/benchmarks.md, "Compiled and memory-lean training")
        return super().apply_factors(x.transpose(1, 2), u, v, bias).transpose(1, 2)

    def apply_matrix(self, x, matrix, bias):
        return F.conv1d(x, matrix.unsqueeze(-1), bias)


class LowRankConv2d(FactorPair):
    """``Conv2d`` as a ``kh×kw`` convolution into ``rank`` channels followed by
    a ``1×1`` convolution out of them: the weight seen as an
    ``out × (in·kh·kw)`` matrix is ``U·V``. This is how the convolutional
    subsampling front end, dense in the paper's recipe, is factorised."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]] = 1,
        padding: Union[int, Tuple[int, int]] = 0,
        bias: bool = True,
        init: str = "svd",
        dense_init: str = "pytorch",
    ):
        kernel_size, stride, padding = (_pair(v) for v in (kernel_size, stride, padding))
        super().__init__(
            in_channels * kernel_size[0] * kernel_size[1], out_channels, rank, bias, init, dense_init
        )
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding

    @classmethod
    def _shaped_like(cls, dense: nn.Module, rank: int, dense_init: str) -> "LowRankConv2d":
        return cls(
            dense.in_channels, dense.out_channels, rank, dense.kernel_size, dense.stride,
            dense.padding, dense.bias is not None, "random", dense_init,
        )

    def _make_dense(self) -> nn.Module:
        return nn.Conv2d(
            self.in_channels, self.out_features, self.kernel_size, self.stride, self.padding,
            bias=self.bias is not None,
        )

    @staticmethod
    def weight_as_matrix(weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() != 4:
            raise ValueError(f"a Conv2d weight is (out, in, kh, kw); got {tuple(weight.shape)}")
        return weight.reshape(weight.shape[0], -1)

    def matrix_as_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.reshape(matrix.shape[0], self.in_channels, *self.kernel_size)

    def apply_factors(self, x, u, v, bias):
        hidden = F.conv2d(x, self.matrix_as_weight(v), stride=self.stride, padding=self.padding)
        return F.conv2d(hidden, u[:, :, None, None], bias)

    def apply_matrix(self, x, matrix, bias):
        return F.conv2d(x, self.matrix_as_weight(matrix), bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_features}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"rank={self.rank}, bias={self.bias is not None}, init={self.init}"
        )
