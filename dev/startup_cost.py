"""What the start-up hook (``espnet_lowrank.pth``) costs every Python process of an environment.

    python dev/startup_cost.py --python .venv/bin/python --repeats 30

Runs ``python -X importtime -c pass`` and a timed ``python -c pass``, with the hook on and off
(``ESPNET_LOWRANK_AUTOLOAD=0``) in turn, and prints the medians as a markdown table: the hook's own
imports (``espnet_lowrank`` and what it pulls in) as ``-X importtime`` counts them, and the whole start.
Run it with nothing else busy on the machine.
"""

import argparse
import os
import re
import statistics
import subprocess
import time

OFF = {"ESPNET_LOWRANK_AUTOLOAD": "0"}


def imports_us(python: str, env: dict) -> int:
    """Microseconds ``-X importtime`` gives the top-level ``espnet_lowrank`` import (0 when absent)."""
    result = subprocess.run([python, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                            env=env, cwd="/", check=True)
    found = re.search(r"^import time:\s+\d+ \|\s+(\d+) \|\s{1,3}espnet_lowrank$", result.stderr, flags=re.M)
    return int(found.group(1)) if found else 0


def start_ms(python: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=env, cwd="/", check=True)
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="python", help="the interpreter of the environment to measure")
    parser.add_argument("--repeats", type=int, default=30, help="runs of each kind, hook on and off interleaved")
    args = parser.parse_args()
    python = os.path.abspath(args.python) if os.sep in args.python else args.python  # the runs start in /
    on, off = dict(os.environ), {**os.environ, **OFF}
    on.pop("ESPNET_LOWRANK_AUTOLOAD", None)
    hook_us, starts = [], {"on": [], "off": []}
    for _ in range(args.repeats):
        hook_us.append(imports_us(python, on))
        starts["on"].append(start_ms(python, on))
        starts["off"].append(start_ms(python, off))
    assert imports_us(python, off) == 0, "the hook ran although switched off"
    print("| `-X importtime`: espnet_lowrank and its imports | `python -c pass`, hook on | hook off | difference |")
    print("|---|---|---|---|")
    on_ms, off_ms = statistics.median(starts["on"]), statistics.median(starts["off"])
    print(f"| {statistics.median(hook_us) / 1e3:.1f} ms | {on_ms:.1f} ms | {off_ms:.1f} ms | {on_ms - off_ms:+.1f} ms |")


if __name__ == "__main__":
    main()
