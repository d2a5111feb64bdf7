"""Stage 11's console: one line per finished epoch, read from the ``train.log`` that ESPnet's
trainer writes (which keeps everything else), e.g.
``stage 11: epoch 3/10  train loss 45.2  valid acc 0.812  cer_ctc 0.104  71 s  ETA 8.3 min``.
"""

import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

RESULTS = re.compile(r"(\d+)epoch results: (.*)")
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
    now, since a resumed run appends); the ETA is the mean epoch time of this run times the epochs
    left. Ends when the log says training finished, or once ``running()`` is false and what was
    written until then is read."""
    offset = start if start is not None else (log.stat().st_size if log.exists() else 0)
    started = last = time.monotonic()
    durations, pending = [], ""
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
            if results is not None:
                now = time.monotonic()
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
