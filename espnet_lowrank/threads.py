"""Threads for each of N torch processes started side by side.

A torch process runs as many OpenMP threads as ``OMP_NUM_THREADS`` says, or
one per core. N such processes that each take every thread oversubscribe the
cores, and OpenMP's spinning threads then slow all of them many times over
(two decode jobs with ``OMP_NUM_THREADS=2`` on 2 cores decoded about 20x
slower than with one thread each). So the stages that start N processes
divide the threads the user allows among them.
"""

import argparse
import os
from typing import Mapping, Optional, Sequence

from espnet_lowrank.errors import InputError, one_line_errors


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def allowed_threads(environ: Optional[Mapping[str, str]] = None) -> int:
    """The user's ``OMP_NUM_THREADS`` if set, else the usable cores."""
    environ = os.environ if environ is None else environ
    value = environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return usable_cores()
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"OMP_NUM_THREADS={value!r} must be a whole number >= 1 (or unset)")
    return int(value)


def threads_per_job(jobs: int, job_threads: int = 0, environ: Optional[Mapping[str, str]] = None) -> int:
    """``job_threads`` if given (> 0), else ``max(1, T // jobs)`` for T :func:`allowed_threads`."""
    if jobs < 1:
        raise InputError(f"jobs={jobs}: at least one job is needed")
    if job_threads < 0:
        raise InputError(f"--job_threads {job_threads} must be >= 0 (0: divide the threads among the jobs)")
    if job_threads:
        return job_threads
    return max(1, allowed_threads(environ) // jobs)


def job_environment(jobs: int, job_threads: int = 0, environ: Optional[Mapping[str, str]] = None) -> dict:
    """A copy of the environment in which each of ``jobs`` processes runs its share of threads."""
    environ = dict(os.environ if environ is None else environ)
    environ["OMP_NUM_THREADS"] = str(threads_per_job(jobs, job_threads, environ))
    return environ


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Print the threads each of --jobs processes gets.")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--job_threads", type=int, default=0, help="> 0: this many, whatever the jobs")
    args = parser.parse_args(argv)
    print(threads_per_job(args.jobs, args.job_threads))


if __name__ == "__main__":
    main()
