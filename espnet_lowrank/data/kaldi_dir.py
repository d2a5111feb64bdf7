"""Kaldi-style data directories (wav.scp, text, utt2spk, spk2utt), the
format every pipeline stage reads and writes.

Directories are written whole into a temporary sibling and renamed into place,
so a reader never sees half of one.
"""

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List

from espnet_lowrank.errors import InputError, one_line_errors
from espnet_lowrank.kaldi_table import read_table


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    speaker: str
    audio: str
    text: str


def write_data_dir(out_dir: Path, utterances: Iterable[Utterance]) -> int:
    """Write ``utterances`` (sorted by id, as Kaldi requires) atomically;
    returns how many were written."""
    out_dir = Path(out_dir)
    rows = sorted(utterances, key=lambda u: u.utt_id)
    if not rows:
        raise InputError(f"no utterances to write to {out_dir}")
    seen = set()
    for row in rows:
        if row.utt_id in seen:
            raise InputError(f"utterance {row.utt_id} appears twice in {out_dir}")
        if not row.utt_id.startswith(row.speaker):
            raise InputError(
                f"utterance {row.utt_id} does not start with its speaker id {row.speaker} "
                "(Kaldi sorts utt2spk and spk2utt together only then)"
            )
        seen.add(row.utt_id)
    speakers: Dict[str, List[str]] = defaultdict(list)
    for row in rows:
        speakers[row.speaker].append(row.utt_id)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_lines(tmp / "wav.scp", (f"{r.utt_id} {r.audio}" for r in rows))
    _write_lines(tmp / "text", (f"{r.utt_id} {r.text}" for r in rows))
    _write_lines(tmp / "utt2spk", (f"{r.utt_id} {r.speaker}" for r in rows))
    _write_lines(tmp / "spk2utt", (f"{s} {' '.join(u)}" for s, u in sorted(speakers.items())))
    replace_dir(tmp, out_dir)
    return len(rows)


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing what was there."""
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    else:
        os.rename(new, target)


def read_data_dir(data_dir: Path) -> List[Utterance]:
    """Utterances of a data dir; every ``text`` entry must have audio and the
    other way round, or the error names the first utterance that does not."""
    data_dir = Path(data_dir)
    wavs = read_table(data_dir / "wav.scp")
    texts = read_table(data_dir / "text")
    utt2spk_path = data_dir / "utt2spk"
    speakers = read_table(utt2spk_path) if utt2spk_path.exists() else {u: u for u in wavs}
    for utt in texts:
        if utt not in wavs:
            raise InputError(f"{data_dir}/text: utterance {utt} has no audio in wav.scp")
    for utt in wavs:
        if utt not in texts:
            raise InputError(f"{data_dir}/wav.scp: utterance {utt} has no transcript in text")
    return [Utterance(u, speakers.get(u, u), wavs[u], texts[u]) for u in sorted(wavs)]


def combine(out_dir: Path, sources: Iterable[Path]) -> int:
    """One data dir holding every utterance of ``sources`` (e.g. train_960)."""
    return write_data_dir(out_dir, (u for source in sources for u in read_data_dir(source)))


@one_line_errors
def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Combine Kaldi-style data dirs.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("sources", type=Path, nargs="+")
    args = parser.parse_args(argv)
    print(f"combined {combine(args.out_dir, args.sources)} utterances into {args.out_dir}")


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with path.open("w", encoding="utf-8") as stream:
        for line in lines:
            stream.write(line + "\n")


if __name__ == "__main__":
    main()
