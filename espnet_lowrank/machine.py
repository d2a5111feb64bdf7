"""A one-line description of the machine, for RESULTS.md and benchmarks:
numbers mean little without it."""

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe() -> str:
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{cpu_model()}, {os.cpu_count()} cores, OMP_NUM_THREADS={threads}"
