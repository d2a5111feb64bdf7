"""bf16 autocast for training on a CPU, where the CPU computes in bf16 natively.

ESPnet's trainer autocasts only on CUDA (``use_amp``), so a CPU training runs in fp32 even where bf16
GEMMs are native (Intel AMX, AVX512-BF16): docs/benchmarks.md measured eager bf16 1.50× faster per
dense training step on a 2-core Xeon with AMX. Without native support bf16 is emulated and slower, so
``auto`` turns it on only where the flags say the CPU has it. Weights, optimiser state and checkpoints
stay fp32: autocast only changes the precision the forward pass computes in, so a run resumes across
the setting; decoding never autocasts.
"""

import functools
import os
from pathlib import Path
from typing import Optional

#: the values of ``--cpu_bf16``
SETTINGS = ("auto", "true", "false")
#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic
NATIVE_FLAGS = ("amx_bf16", "avx512_bf16")
#: oneDNN primitives kept for reuse in a bf16 CPU training (oneDNN's default: 1024)
PRIMITIVE_CACHE = 16384


def native_bf16_flag(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[str]:
    """The first of :data:`NATIVE_FLAGS` this CPU has, or None (none, or no ``/proc/cpuinfo`` to tell)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return next((flag for flag in NATIVE_FLAGS if flag in flags), None)


def decide(setting: str, on_cpu: bool, cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple:
    """``(use bf16, why)`` for a training with ``--cpu_bf16 setting``; a CUDA training is ESPnet's
    ``use_amp``'s business."""
    if not on_cpu:
        return False, "not a CPU training (on CUDA, ESPnet's use_amp sets the precision)"
    if setting == "false":
        return False, "--cpu_bf16 false"
    flag = native_bf16_flag(cpuinfo)
    if setting == "true":
        return True, f"--cpu_bf16 true ({'native: ' + flag if flag else 'no native bf16 here: emulated'})"
    if flag is None:
        return False, "--cpu_bf16 auto: this CPU has no native bf16 (neither AMX nor AVX512-BF16)"
    return True, f"--cpu_bf16 auto: native bf16 ({flag})"


#: the parts of an ESPnet ASR model that make its features: ESPnet keeps them out of autocast
FEATURE_PARTS = ("frontend", "specaug", "normalize")


def autocast_forward(model) -> None:
    """Every forward pass of ``model`` (training and validation) computes in bf16 autocast, but for its
    features: as ESPnet's ``encode`` does under CUDA autocast (unless ``autocast_frontend``), the front
    end, SpecAugment and normalisation stay fp32, so the log-mel features keep their precision."""
    import torch

    _wrap_forward(model, torch.autocast("cpu", dtype=torch.bfloat16))
    features_outside_autocast(model)


def features_outside_autocast(model) -> None:
    """The front end, SpecAugment and normalisation of ``model`` compute in fp32 under CPU autocast
    (unless ``autocast_frontend``), as ESPnet's ``encode`` keeps them under CUDA autocast."""
    import torch

    if not getattr(model, "autocast_frontend", False):
        for name in FEATURE_PARTS:
            if getattr(model, name, None) is not None:
                _wrap_forward(getattr(model, name), torch.autocast("cpu", enabled=False))


def _wrap_forward(module, context) -> None:
    forward = module.forward

    @functools.wraps(forward)
    def forward_in_context(*args, **kwargs):
        with context:
            return forward(*args, **kwargs)

    module.forward = forward_in_context


def keep_primitives() -> str:
    """Raise oneDNN's primitive cache for a bf16 CPU training, unless the environment sets it already;
    returns the capacity in force.

    oneDNN runs the bf16 matrix products and builds (JIT-compiles) a primitive for every shape it meets.
    A recipe's batches come in many lengths, so a training needs thousands of primitives a pass, and
    with the default 1024 it rebuilds them every epoch: on the demo's batch lengths a bf16 step was
    0.84× as fast as fp32, and 1.17× with 16384 kept (docs/benchmarks.md, dev/length_mix.py). oneDNN
    reads the setting when it builds its first primitive, which a training does after the model is built."""
    return os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(PRIMITIVE_CACHE))
