"""What a comparison trains: its entries (a config, the run.sh options of its own, the seeds it runs
with) and every run they make, each with its experiment tag."""

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from espnet_lowrank.errors import InputError


@dataclass
class Entry:
    """One row of the table: a config, its own run.sh options and, if it has
    its own, the seeds it runs with (``--seeds 2022,2023`` at the end)."""

    config: Path
    options: List[str] = field(default_factory=list)
    seeds: List[int] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "Entry":
        words = shlex.split(text)
        seeds = []
        if "--seeds" in words:
            index = words.index("--seeds")
            if index + 2 != len(words):
                raise InputError(f"{text!r}: --seeds A,B,... must come last")
            seeds = [int(seed) for seed in words[index + 1].split(",")]
            words = words[:index]
        return cls(Path(words[0]), words[1:], seeds)

    @property
    def name(self) -> str:
        return shlex.join([self.config.name, *self.options])  # as it would be typed again

    @property
    def tag(self) -> str:
        suffix = "".join(f"_{re.sub(r'[^A-Za-z0-9._]+', '', word)}" for word in self.options)
        return self.config.stem + suffix.replace("_lowrank_warmup_epochs_", "_warmup").replace(
            "_lowrank_param_ratio_", "_budget").replace("_lowrank_allocator_", "_")


@dataclass
class PlannedRun:
    entry: Entry
    seed: Optional[int]
    tag: str
    options: List[str]  # the entry's run.sh options, and its seed


def config_seed(config: Path) -> Optional[int]:
    from espnet_lowrank.model_config import read_config

    return read_config(config).get("seed")


def planned_runs(entries: Sequence[Entry], seeds: Sequence[int]) -> List[PlannedRun]:
    """Every run of ``entries``, in order, each once per seed (its own, else ``seeds``, else the
    config's, whose run keeps the plain tag)."""
    plan = []
    for entry in entries:
        own_seed = config_seed(entry.config)
        for seed in entry.seeds or seeds or [own_seed]:
            tag, options = entry.tag, list(entry.options)
            if seed != own_seed:
                tag, options = f"{tag}_seed{seed}", [*options, "--seed", str(seed)]
            plan.append(PlannedRun(entry, seed, tag, options))
    return plan
