"""A finished run's epochs, read back from the reporter state ESPnet keeps in ``checkpoint.pth``."""

import datetime
from pathlib import Path
from typing import Dict

import torch

from espnet_lowrank.errors import InputError
from espnet_lowrank.stages.train import WARMUP_DIR


def epoch_stats(exp: Path) -> Dict[int, Dict[str, Dict[str, float]]]:
    """ESPnet's per-epoch statistics of one training run."""
    checkpoint = exp / "checkpoint.pth"
    if not checkpoint.exists():
        raise InputError(f"{checkpoint} does not exist: did stage 11 run for {exp.name}?")
    # our own run's checkpoint; the reporter state is not plain tensors
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["reporter"]["stats"]


def seconds(value) -> float:
    """An epoch's time as ESPnet's reporter keeps it: a timedelta (espnet
    202511), a dict naming its seconds (202611), or a number."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value["__timedelta_seconds__"] if isinstance(value, dict) else float(value)


def training_history(exp: Path) -> Dict[str, list]:
    """Epoch numbers, validation curves and seconds (training + validation)
    of every epoch of a run, a dense warm-up's first."""
    phases = [exp / WARMUP_DIR, exp] if (exp / WARMUP_DIR / "checkpoint.pth").exists() else [exp]
    history: Dict[str, list] = {"epochs": [], "valid_acc": [], "valid_loss": [], "seconds": []}
    for phase in phases:
        stats = epoch_stats(phase)
        offset = len(history["epochs"])
        for epoch in sorted(stats):
            history["epochs"].append(offset + epoch)
            history["valid_acc"].append(stats[epoch]["valid"]["acc"])
            history["valid_loss"].append(stats[epoch]["valid"]["loss"])
            history["seconds"].append(sum(seconds(stats[epoch][part]["time"]) for part in ("train", "valid")))
    return history
