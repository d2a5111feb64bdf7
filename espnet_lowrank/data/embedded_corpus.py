"""The embedded corpus: English speech synthesised offline with libespeak-ng,
written in LibriSpeech's layout so the LibriSpeech preparation reads it.

    python -m espnet_lowrank.data.embedded_corpus --out downloads --size demo --seed 0

Train speakers are espeak-ng voice variants at random rates and pitches; dev
and test use variants never heard in training, and ``eval`` — the studies'
larger held-out set, good for telling a 1-point WER difference from noise —
twelve more, heard nowhere else. Deterministic from the seed: each split
draws its sentences after the ones before it, so adding ``eval`` left
train, dev and test as they were, and a corpus made before it gains it alone.
"""

import argparse
import logging
import multiprocessing
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch
import torchaudio
from tqdm import tqdm

from espnet_lowrank.data.espeak import espeak
from espnet_lowrank.data.grammar import sentence
from espnet_lowrank.errors import InputError, leave_ctrl_c_to_the_parent, one_line_errors

SAMPLE_RATE = 16000
TRAIN_VARIANTS = (
    "m1 m2 m3 m4 m5 m6 m7 f1 f2 f3 f4 klatt klatt2 klatt3 Alex Andy Annie Gene Jacky Lee "
    "Michael Mike Mr_serious Reed adam ed edward iven john max"
).split()
DEV_VARIANTS = ("m8", "f5", "Henrique")
TEST_VARIANTS = ("klatt4", "Denis", "david", "norbert", "Andrea")
EVAL_VARIANTS = ("Alicia", "anika", "aunty", "belinda", "benjamin", "boris", "caleb", "linda", "paul", "robert",
                 "steph", "travis")
#: The splits a corpus made before ``eval`` existed holds (its marker names no split).
FIRST_SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class CorpusSize:
    """Utterances per voice in each split, and how many train voices."""

    train_voices: int
    train_per_voice: int
    dev_per_voice: int
    test_per_voice: int
    eval_per_voice: int


SIZES: Dict[str, CorpusSize] = {
    "tiny": CorpusSize(train_voices=4, train_per_voice=6, dev_per_voice=2, test_per_voice=2, eval_per_voice=1),
    "demo": CorpusSize(train_voices=30, train_per_voice=60, dev_per_voice=20, test_per_voice=30, eval_per_voice=60),
}


def splits(size: CorpusSize) -> Dict[str, Tuple[Sequence[str], int]]:
    return {
        "train": (TRAIN_VARIANTS[: size.train_voices], size.train_per_voice),
        "dev": (DEV_VARIANTS, size.dev_per_voice),
        "test": (TEST_VARIANTS, size.test_per_voice),
        "eval": (EVAL_VARIANTS, size.eval_per_voice),
    }


def synthesize(out: Path, size: str = "demo", seed: int = 0, nj: int = 2) -> Path:
    """Write ``out/LibriSpeech/{train,dev,test,eval}``; returns the LibriSpeech root.
    Each finished split leaves a marker and is not made twice."""
    if size not in SIZES:
        raise InputError(f"size={size!r} is unknown; choose from {', '.join(SIZES)}")
    root = Path(out) / "LibriSpeech"
    made = {split for split in splits(SIZES[size]) if _marker(root, size, seed, split).exists()}
    if (root / f".embedded-{size}-{seed}.complete").exists():  # made before eval existed
        made.update(FIRST_SPLITS)
    jobs = [job for job in _plan(SIZES[size], random.Random(seed)) if job.split not in made]
    if not jobs:
        logging.info("embedded corpus (%s, seed %d) already at %s", size, seed, root)
        return root
    # One fresh process per speaker: espeak-ng's output depends on what the
    # process spoke before, so this keeps the audio a function of the seed.
    context = multiprocessing.get_context("fork")
    with context.Pool(nj, maxtasksperchild=1, initializer=leave_ctrl_c_to_the_parent) as pool, tqdm(
        total=sum(len(job.lines) for job in jobs), desc="synthesising", unit="utt"
    ) as bar:
        for job, (rate, waves) in zip(jobs, pool.imap(_speak, jobs)):
            _write_speaker(root / job.split, job, rate, waves)
            bar.update(len(waves))
    for split in {job.split for job in jobs}:
        _marker(root, size, seed, split).touch()
    return root


def _marker(root: Path, size: str, seed: int, split: str) -> Path:
    return root / f".embedded-{size}-{seed}-{split}.complete"


@dataclass(frozen=True)
class SpeakerJob:
    split: str
    speaker: str
    voice: str
    lines: Tuple[Tuple[str, int, int], ...]  # (text, rate in words/min, pitch)


def _plan(size: CorpusSize, rng: random.Random):
    for split_index, (split, (variants, count)) in enumerate(splits(size).items()):
        for index, variant in enumerate(variants):
            lines = tuple(
                (sentence(rng), rng.randint(130, 200), rng.randint(25, 75)) for _ in range(count)
            )
            # speakers: train 1000+, dev 2000+, test 3000+, eval 4000+
            speaker = str(1000 * (split_index + 1) + index)
            yield SpeakerJob(split, speaker, "en+" + variant.replace("_", " "), lines)


def _speak(job: SpeakerJob):
    synthesiser = espeak()
    synthesiser.seed(zlib.crc32(job.speaker.encode()))  # the audio is a function of the job alone
    waves = [synthesiser.say(text, job.voice, rate, pitch) for text, rate, pitch in job.lines]
    return synthesiser.sample_rate, waves


def _write_speaker(split_dir: Path, job: SpeakerJob, rate: int, waves) -> None:
    chapter = "1"
    chapter_dir = split_dir / job.speaker / chapter
    chapter_dir.mkdir(parents=True, exist_ok=True)
    transcript = []
    for number, ((text, _, _), wave) in enumerate(zip(job.lines, waves)):
        resampled = torchaudio.functional.resample(
            torch.from_numpy(wave.astype(np.float32) / 32768.0), rate, SAMPLE_RATE
        )
        utt = f"{job.speaker}-{chapter}-{number:04d}"
        soundfile.write(chapter_dir / f"{utt}.flac", resampled.numpy(), SAMPLE_RATE)
        transcript.append(f"{utt} {text.upper()}")
    (chapter_dir / f"{job.speaker}-{chapter}.trans.txt").write_text("\n".join(transcript) + "\n")


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Synthesise the embedded corpus.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="demo", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(synthesize(args.out, args.size, args.seed, args.nj))


if __name__ == "__main__":
    main()
