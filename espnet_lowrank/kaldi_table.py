"""Kaldi-style tables (wav.scp, text, utt2spk, utt2num_samples): one ``key rest-of-line`` per line."""

from pathlib import Path
from typing import Dict

from espnet_lowrank.errors import InputError


def read_table(path: Path) -> Dict[str, str]:
    """``key rest-of-line`` files (wav.scp, text, utt2spk) as a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    table: Dict[str, str] = {}
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if key in table:
                raise InputError(f"{path}:{number}: {key} appears twice")
            table[key] = value
    return table
