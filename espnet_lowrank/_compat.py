"""What differs between ESPnet releases: 202611 moved the old ``espnet.nets``
package to ``espnet2.legacy.nets``, and loads checkpoints through
``safe_torch_load`` (weights only first) where 202511 calls ``torch.load``."""

try:  # espnet >= 202611
    from espnet2.legacy.nets.pytorch_backend.transformer.embedding import PositionalEncoding
except ImportError:  # espnet 202511
    from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding

try:  # espnet >= 202611
    from espnet2.torch_utils.safe_torch_load import safe_torch_load as load_checkpoint
except ImportError:  # espnet 202511: its trainer's resume calls torch.load(..., weights_only=False)
    import functools

    import torch

    load_checkpoint = functools.partial(torch.load, weights_only=False)

__all__ = ["PositionalEncoding", "load_checkpoint"]
