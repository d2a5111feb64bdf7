"""Where a training step's time goes: ``torch.profiler`` on one step, the
operators (CPU) or kernels (CUDA) by self time, and the share spent in
matrix multiplies and convolutions — the work low rank shrinks; the rest
(element-wise work, normalisation, copies, launches) it leaves as it is."""

import re
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

#: names of the operators and kernels that multiply matrices or convolve:
#: aten's mm/bmm/addmm/convolutions and oneDNN's on CPU, cuBLAS's
#: (``gemm``, ``nvjet``), CUTLASS's and cuDNN's kernels on CUDA
GEMM_NAMES = re.compile(r"(^aten::(mm|bmm|addmm|addbmm|baddbmm|_?convolution|mkldnn_convolution|"
                        r"cudnn_convolution|conv\w*)$)|gemm|nvjet|cutlass|xmma|conv", re.IGNORECASE)


@dataclass
class StepProfile:
    top: List[Tuple[str, float, int]]  # (name, self time in ms, calls), longest first
    total_ms: float
    gemm_ms: float

    @property
    def gemm_share(self) -> float:
        return self.gemm_ms / self.total_ms if self.total_ms else 0.0


def is_gemm(name: str) -> bool:
    return bool(GEMM_NAMES.search(name))


def profile_step(step: Callable[[], None], device: str, top: int = 12) -> StepProfile:
    """Profile one call of ``step``: on CUDA the kernels' device time, on CPU
    the operators' own CPU time (a parent's time is not counted again)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiler:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    times = []
    for event in profiler.key_averages():
        if device == "cuda":
            self_us = event.self_device_time_total
            on_device = event.device_type == torch.autograd.DeviceType.CUDA
            if not on_device or self_us <= 0:
                continue
        else:
            self_us = event.self_cpu_time_total
            if self_us <= 0:
                continue
        times.append((event.key, self_us / 1000, event.count))
    times.sort(key=lambda item: -item[1])
    total = sum(ms for _, ms, _ in times)
    gemm = sum(ms for name, ms, _ in times if is_gemm(name))
    return StepProfile(top=times[:top], total_ms=total, gemm_ms=gemm)


def format_profile(label: str, result: StepProfile) -> str:
    lines = [f"{label}: {result.total_ms:.1f} ms of self time, {100 * result.gemm_share:.0f}% in GEMMs "
             f"and convolutions",
             f"  {'operator / kernel':60} {'self ms':>9} {'share':>6} {'calls':>6}  GEMM"]
    for name, ms, calls in result.top:
        share = ms / result.total_ms if result.total_ms else 0.0
        lines.append(f"  {name[:60]:60} {ms:>9.1f} {100 * share:>5.1f}% {calls:>6}  {'yes' if is_gemm(name) else ''}")
    return "\n".join(lines)
