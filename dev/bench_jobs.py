"""Stage 12's parallel decoding under each thread setting: ``python dev/bench_jobs.py EXP DATA_DIR``.

Decodes the first ``--utts`` utterances of DATA_DIR with ``--nj`` jobs (the
stage's own code), settings interleaved in every repeat:

* OMP_NUM_THREADS unset: the jobs divide the cores (as before the fix, too);
* OMP_NUM_THREADS=T exported, divided among the jobs (since the fix);
* OMP_NUM_THREADS=T exported, every job taking all T (before the fix:
  reproduced with ``--job_threads T``).

Reports the median over repeats of the decoding time per utterance, read
from the jobs' logs (from "speech length" to "best hypo", so process start
and model loading are not in it), and of the stage's wall time.
"""

import argparse
import contextlib
import os
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from espnet_lowrank import machine
from espnet_lowrank.tools.command import command_main
from espnet_lowrank.errors import InputError
from espnet_lowrank.stages.decode import decode

_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*INFO: "
_START = re.compile(_STAMP + r"speech length", re.M)
_END = re.compile(_STAMP + r"best hypo:", re.M)


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def seconds_per_utterance(logs: Sequence[Path]) -> float:
    """Mean decoding time of one utterance over the jobs' logs."""
    spans = []
    for log in logs:
        text = log.read_text(errors="replace")
        starts, ends = _START.findall(text), _END.findall(text)
        if not starts or len(starts) != len(ends):
            raise InputError(f"{log}: {len(starts)} utterances started, {len(ends)} decoded")
        spans += [_time(end) - _time(start) for start, end in zip(starts, ends)]
    return sum(spans) / len(spans)


@contextlib.contextmanager
def omp_num_threads(value: Optional[int]) -> Iterator[None]:
    """The environment the stage starts its jobs from, with OMP_NUM_THREADS set or unset."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ.pop("OMP_NUM_THREADS", None)
    if value is not None:
        os.environ["OMP_NUM_THREADS"] = str(value)
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        if saved is not None:
            os.environ["OMP_NUM_THREADS"] = saved


def settings(omp: int) -> List[Tuple[str, Optional[int], int]]:
    """(label, exported OMP_NUM_THREADS or None, --job_threads)."""
    return [
        ("OMP_NUM_THREADS unset (before = after)", None, 0),
        (f"OMP_NUM_THREADS={omp}, after: divided", omp, 0),
        (f"OMP_NUM_THREADS={omp}, before: not divided", omp, omp),
    ]


def bench_jobs(exp: Path, data_dir: Path, model: str, config: Optional[Path], utts: int, nj: int,
               omp: int, repeats: int) -> Dict[str, Dict[str, List[float]]]:
    keys = (data_dir / "wav.scp").read_text().splitlines()[:utts]
    results = {label: {"per_utt_s": [], "wall_s": []} for label, _, _ in settings(omp)}
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "data"
        subset.mkdir()
        (subset / "wav.scp").write_text("\n".join(keys) + "\n")
        runs = [(repeat, setting) for repeat in range(repeats) for setting in settings(omp)]
        for repeat, (label, exported, job_threads) in tqdm(runs, desc="decoding", unit="run"):
            out = Path(tmp) / f"out{repeat}"
            start = time.perf_counter()
            with omp_num_threads(exported):
                decode(subset, out, exp / "config.yaml", exp / model, config, nj, job_threads=job_threads)
            results[label]["wall_s"].append(time.perf_counter() - start)
            logs = sorted((out / "logdir").glob("asr_inference.*.log"))
            results[label]["per_utt_s"].append(seconds_per_utterance(logs))
    return results


def format_results(results, utts: int, nj: int, repeats: int) -> str:
    lines = [
        # not machine.describe(): OMP_NUM_THREADS is the settings' to set, whatever the caller's
        f"Machine: {machine.cpu_model()}, {os.cpu_count()} cores; {utts} utterances, {nj} jobs, "
        f"median of {repeats} runs",
        "",
        "| setting | s per utterance | stage wall time (s) |",
        "|---|---:|---:|",
    ]
    for label, measured in results.items():
        lines.append(f"| {label} | {statistics.median(measured['per_utt_s']):.3f} "
                     f"| {statistics.median(measured['wall_s']):.1f} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp", type=Path, help="a trained exp/asr_* dir (config.yaml and the model)")
    parser.add_argument("data_dir", type=Path, help="a dump/raw/<set> dir with wav.scp")
    parser.add_argument("--model", default="valid.acc.ave.pth")
    parser.add_argument("--inference_config", type=Path, default=None)
    parser.add_argument("--utts", type=int, default=20)
    parser.add_argument("--nj", type=int, default=2)
    parser.add_argument("--omp", type=int, default=os.cpu_count() or 1,
                        help="the OMP_NUM_THREADS a user exports (default: the cores)")
    parser.add_argument("--repeats", type=int, default=3)


def run(args: argparse.Namespace) -> None:
    results = bench_jobs(args.exp, args.data_dir, args.model, args.inference_config, args.utts, args.nj,
                         args.omp, args.repeats)
    print(format_results(results, args.utts, args.nj, args.repeats))


main = command_main(__doc__, add_arguments, run)

if __name__ == "__main__":
    main()
