"""Compiled training inside ESPnet's trainer, block by block.

ESPnet's ASR trainer has no compile option, and compiling the whole model
would not do: ESPnet checks the model's class, and ``torch.compile(model)``
prefixes every checkpoint key with ``_orig_mod.``. ``nn.Module.compile``
on each encoder and decoder block keeps the model and its keys as they are,
so a compiled run's checkpoints resume, decode and pack uncompiled.

Speech lengths change from batch to batch and a linear rank mapping gives
every block other factor shapes, so shapes are dynamic, parameters' too:
one graph serves every block of a kind instead of one per rank set, and a
new length costs no recompilation once a dimension has been seen to vary.
"""

import logging
from typing import List

import torch

from espnet_lowrank.architectures import BLOCK_CONTAINERS
from espnet_lowrank.errors import InputError

#: graphs a block function may hold before dynamo falls back to eager: a
#: training needs a few (a static first graph, a dynamic one, a batch of one);
#: ``bench`` compiles one per config, precision and memory option
RECOMPILE_LIMIT = 64


def compile_blocks(model: torch.nn.Module) -> List[str]:
    """Compile every block of the model's encoder and decoder in place; the
    names of the compiled blocks' containers. Refuses a model with neither."""
    import torch._dynamo

    torch._dynamo.config.force_parameter_static_shapes = False
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    compiled = []
    for path in BLOCK_CONTAINERS:
        container = _submodule(model, path)
        if container is None:
            continue
        for block in container:
            block.compile(dynamic=True)
        compiled.append(f"{path} ({len(container)} blocks)")
    if not compiled:
        raise InputError(
            f"compile: {type(model).__name__} has none of {', '.join(BLOCK_CONTAINERS)} to compile "
            f"(its encoder is {type(getattr(model, 'encoder', None)).__name__})"
        )
    logging.info("compile: torch.compile(dynamic=True) on %s", ", ".join(compiled))
    return compiled


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (first compiles and
    recompiles of every block function)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _submodule(model: torch.nn.Module, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None
