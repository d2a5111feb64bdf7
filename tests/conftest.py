import time

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


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Stages 1-14 once, with speed perturbation, on the tiny embedded corpus; the end-to-end tests of
    run.sh and of the tools that drive it add their own runs (their own tags) to this recipe dir."""
    from tiny_recipe import SPEED_PERTURB, TINY, recipe_dir, run

    recipe = recipe_dir(tmp_path_factory.mktemp("recipe"))
    started = time.time()
    result = run(recipe, *TINY, *SPEED_PERTURB)
    return {"recipe": recipe, "exp": recipe / "exp" / "asr_tiny_lowrank", "log": result.stderr,
            "seconds": time.time() - started}
