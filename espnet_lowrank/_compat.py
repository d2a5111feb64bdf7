"""Imports that moved between ESPnet releases: 202611 moved the old
``espnet.nets`` package to ``espnet2.legacy.nets``."""

try:  # espnet >= 202611
    from espnet2.legacy.nets.pytorch_backend.transformer.embedding import PositionalEncoding
except ImportError:  # espnet 202511
    from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding

__all__ = ["PositionalEncoding"]
