"""A recipe dir (``egs2/<corpus>/asr1``: its ``run.sh``, ``conf/``, ``local/``) that a study runs."""

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from espnet_lowrank.errors import InputError
from espnet_lowrank.threads import job_environment


@dataclass(frozen=True)
class Recipe:
    path: Path

    def __post_init__(self):
        if not (self.path / "run.sh").is_file():
            raise InputError(f"--recipe_dir {self.path} holds no run.sh: give a recipe dir such as "
                             "egs2/embedded/asr1")

    def scratch(self, directory: Path) -> "Recipe":
        """A new recipe dir in ``directory`` with this one's run.sh, conf/ and local/, and data of its own."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("conf", "local"):
            (directory / name).symlink_to((self.path / name).resolve())
        (directory / "run.sh").write_text(f'#!/usr/bin/env bash\nexec {shlex.quote(str(self.path.resolve() / "run.sh"))} "$@"\n')
        (directory / "run.sh").chmod(0o755)
        return Recipe(directory)

    def exp(self, tag: str) -> Path:
        return self.path / "exp" / f"asr_{tag}"

    def run(self, *options: str, log: Optional[Path] = None, side_by_side: int = 1) -> None:
        """One ``run.sh`` call, with this Python; its output to ``log`` if given, else to ours. One of
        ``side_by_side`` runs at a time gets that share of the threads (OMP_NUM_THREADS) for every
        process it starts: torch processes that each take every core slow each other many times over."""
        command = ["./run.sh", "--python", sys.executable, *options]
        # one print per line: runs started side by side must not interleave their lines
        print(f"+ (cd {self.path} && {shlex.join(command)})" + (f" > {log}" if log else ""), file=sys.stderr,
              flush=True)
        environment = job_environment(side_by_side) if side_by_side > 1 else None
        if log is None:
            if subprocess.run(command, cwd=self.path, env=environment).returncode:
                raise InputError(f"run.sh {shlex.join(options)} failed (in {self.path})")
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as output:
            if subprocess.run(command, cwd=self.path, stdout=output, stderr=subprocess.STDOUT,
                              env=environment).returncode:
                raise InputError(f"run.sh {shlex.join(options)} failed: see {log}")
