import pytest
import torch

import espnet_lowrank  # noqa: F401  (registers the classes, as a user's import does)

TINY_ENCODER = dict(
    output_size=32,
    attention_heads=4,
    linear_units=64,
    num_blocks=3,
    dropout_rate=0.0,
    positional_dropout_rate=0.0,
    cnn_module_kernel=5,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
