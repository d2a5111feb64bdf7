"""Stage 11's console, read from the ``train.log`` that ESPnet's trainer writes (which keeps
everything else): one line per finished epoch, e.g.
``stage 11: epoch 3/10  train loss 45.2  valid acc 0.812  cer_ctc 0.104  71 s  ETA 8.3 min``,
and in between, at most once a minute, how far the epoch has got
(``stage 11: epoch 4/10  100/156 batches  loss 41.7``).
"""

import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

RESULTS = re.compile(r"(\d+)epoch results: (.*)")
BATCHES = re.compile(r"(\d+)epoch:train:\d+-(\d+)batch: .*?\bloss=([\d.e+-]+)")
EPOCH_LENGTH = re.compile(r"\[train\] Batch sampler: \w+\(N-batch=(\d+)")
#: the fewest seconds between two console lines inside an epoch
BATCH_LINE_SECONDS = 60.0
SECTION = re.compile(r"\[(\w+)\] ([^\[]*)")
FINISHED = "The training was finished at"


def epoch_results(line: str) -> Optional[Dict[str, Dict[str, str]]]:
    """``{"epoch": {"": N}, "train": {...}, "valid": {...}}`` from ESPnet's
    ``Nepoch results: [train] k=v, ... [valid] k=v, ...`` line, else None."""
    match = RESULTS.search(line)
    if not match:
        return None
    parsed = {"epoch": {"": match.group(1)}}
    for section, body in SECTION.findall(match.group(2)):
        pairs = (item.split("=", 1) for item in body.split(", ") if "=" in item)
        parsed[section] = {key.strip(): value.strip().rstrip(",") for key, value in pairs}
    return parsed


def epoch_line(results: Dict[str, Dict[str, str]], total: int, seconds: float, eta_seconds: float) -> str:
    train, valid = results.get("train", {}), results.get("valid", {})
    words = [f"stage 11: epoch {results['epoch']['']}/{total}"]
    for label, section, key in (("train loss", train, "loss"), ("valid acc", valid, "acc"),
                                ("cer_ctc", valid, "cer_ctc")):
        if key in section:
            words.append(f"{label} {float(section[key]):.3g}")
    words.append(f"{seconds:.0f} s")
    if eta_seconds > 0:
        words.append(f"ETA {eta_seconds / 60:.1f} min")
    return "  ".join(words)


def follow(log: Path, total: int, running: Callable[[], bool] = lambda: True, poll_seconds: float = 1.0,
           out=sys.stderr, start: Optional[int] = None) -> None:
    """Print each epoch's line as it is appended to ``log`` after byte ``start`` (default: its end
    now, since a resumed run appends), and batch lines in between; the ETA is the mean epoch time of
    this run times the epochs left. Ends when the log says training finished, or once ``running()``
    is false and what was written until then is read."""
    offset = start if start is not None else (log.stat().st_size if log.exists() else 0)
    started = last = shown = time.monotonic()
    durations, pending, batches = [], "", "?"
    while True:
        still_running = running()
        if log.exists():
            with log.open(encoding="utf-8", errors="replace") as stream:
                stream.seek(offset)
                pending += stream.read()
                offset = stream.tell()
        *lines, pending = pending.split("\n")
        for line in lines:
            results = epoch_results(line)
            length, progress = EPOCH_LENGTH.search(line), BATCHES.search(line)
            if length:
                batches = length.group(1)
            elif progress and time.monotonic() - shown >= BATCH_LINE_SECONDS:
                epoch, done, loss = progress.groups()
                print(f"stage 11: epoch {epoch}/{total}  {done}/{batches} batches  loss {float(loss):.3g}",
                      file=out, flush=True)
                shown = time.monotonic()
            if results is not None:
                now = shown = time.monotonic()
                durations.append(now - last)
                last = now
                left = total - int(results["epoch"][""])
                eta = left * sum(durations) / len(durations)
                print(epoch_line(results, total, durations[-1], eta), file=out, flush=True)
            elif FINISHED in line:
                print(f"stage 11: training finished ({(time.monotonic() - started) / 60:.1f} min)",
                      file=out, flush=True)
                return
        if not still_running:
            return
        time.sleep(poll_seconds)
