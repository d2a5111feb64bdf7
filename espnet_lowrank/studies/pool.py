"""Running a study's runs: one after another (their times comparable), or several at a time."""

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from espnet_lowrank.errors import InputError

Task = TypeVar("Task")


def run_all(make: Callable[[Task], None], tasks: Sequence[Task], jobs: int = 1) -> None:
    """``make`` every task. One job: in order, stopping at the first failure. Several: ``jobs`` at a
    time, a failure stopping none of the others, and every failure named at the end."""
    if jobs == 1:
        for task in tasks:
            make(task)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = [pool.submit(make, task) for task in tasks]
    failed = [str(outcome.exception()) for outcome in outcomes if outcome.exception()]
    if failed:
        raise InputError("; ".join(failed))
