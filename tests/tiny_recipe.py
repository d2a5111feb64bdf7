"""run.sh on the tiny embedded corpus, as the end-to-end tests drive it: a
recipe dir, the options that keep a run small, and a kill -9 at a chosen point."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "conf" / "tiny_lowrank.yaml"
#: The data every end-to-end test shares (the pipeline fixture prepares it once): no config, no training options.
TINY_DATA = ("--embedded_size", "tiny", "--token_type", "bpe", "--nbpe", "40", "--inference_nj", "2")
TINY = (*TINY_DATA, "--asr_config", str(TINY_CONFIG),
        "--asr_args", "--max_epoch 2 --batch_size 8 --batch_type unsorted")
SPEED_PERTURB = ("--speed_perturb_factors", "0.9 1.0 1.1")


def recipe_dir(path: Path) -> Path:
    """A recipe dir as in egs2/*/asr1: a run.sh that hands over to the top level's, conf/ and local/ linked
    to the top level."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("conf", "local"):
        if not (path / name).exists():
            (path / name).symlink_to(ROOT / name)
    if not (path / "run.sh").exists():
        (path / "run.sh").write_text(f'#!/usr/bin/env bash\nexec "{ROOT / "run.sh"}" "$@"\n')
        (path / "run.sh").chmod(0o755)
    return path


def run(cwd: Path, *options: str, check: bool = True) -> subprocess.CompletedProcess:
    """The recipe's run.sh, run in ``cwd`` as a user runs it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        ["./run.sh", "--python", sys.executable, *options],
        cwd=cwd, capture_output=True, text=True, env=env,
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def kill_when_written(recipe: Path, options, path: Path) -> None:
    """Start run.sh with ``options`` and kill -9 its whole process group once ``path`` exists."""
    process = subprocess.Popen(
        ["./run.sh", "--python", sys.executable, *options], cwd=recipe,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.time() + 300
    while not path.exists() and time.time() < deadline:
        assert process.poll() is None, f"run.sh ended before {path} was written"
        time.sleep(0.2)
    time.sleep(0.5)  # let checkpoint.pth follow
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
