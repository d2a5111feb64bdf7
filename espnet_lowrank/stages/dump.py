"""Stages 3 and 4: check every audio file and write the dump dir ESPnet
trains from (wav.scp, text, utt2spk, spk2utt, utt2num_samples), then filter
by length.

Stage 3 opens every file, so a missing or unreadable one stops here, named,
rather than hours into training.
"""

import argparse
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

import soundfile
from tqdm import tqdm

from espnet_lowrank.data.kaldi_dir import Utterance, read_data_dir, read_table, replace_dir, write_data_dir
from espnet_lowrank.stages import StageError


def format_dir(data_dir: Path, out_dir: Path, sample_rate: int = 16000) -> int:
    """Stage 3: verify the audio of every utterance and count its samples."""
    try:
        utterances = read_data_dir(data_dir)
    except (FileNotFoundError, ValueError) as error:
        raise StageError(f"stage 3: {error}") from error
    samples: Dict[str, int] = {}
    for utt in tqdm(utterances, desc=f"checking {data_dir.name}", unit="utt"):
        path = Path(utt.audio)
        if not path.is_file():
            raise StageError(
                f"stage 3: {data_dir}/wav.scp: utterance {utt.utt_id}: audio file {path} does not exist"
            )
        try:
            info = soundfile.info(str(path))
        except Exception as error:
            raise StageError(
                f"stage 3: {data_dir}/wav.scp: utterance {utt.utt_id}: cannot read {path}: {error}"
            ) from error
        if info.samplerate != sample_rate:
            raise StageError(
                f"stage 3: {data_dir}/wav.scp: utterance {utt.utt_id}: {path} is sampled at "
                f"{info.samplerate} Hz, the recipe expects {sample_rate} Hz"
            )
        samples[utt.utt_id] = info.frames
    return _write_dump(out_dir, utterances, samples)


def filter_dir(
    dump_dir: Path, out_dir: Path, min_seconds: float, max_seconds: float,
    max_text_chars: int, sample_rate: int = 16000,
) -> int:
    """Stage 4: keep utterances with min ≤ duration ≤ max and a transcript of
    1 to ``max_text_chars`` characters."""
    utterances = read_data_dir(dump_dir)
    samples = {k: int(v) for k, v in read_table(dump_dir / "utt2num_samples").items()}
    kept = [
        u for u in utterances
        if min_seconds * sample_rate <= samples[u.utt_id] <= max_seconds * sample_rate
        and 0 < len(u.text) <= max_text_chars
    ]
    if not kept:
        raise StageError(
            f"stage 4: no utterance of {dump_dir} is between {min_seconds} and {max_seconds} s "
            f"with at most {max_text_chars} transcript characters; nothing to train on"
        )
    return _write_dump(out_dir, kept, samples)


def _write_dump(out_dir: Path, utterances, samples: Dict[str, int]) -> int:
    """A Kaldi dir plus utt2num_samples, in place at once."""
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    count = write_data_dir(staging, utterances)
    with (staging / "utt2num_samples").open("w") as stream:
        for utt in sorted(u.utt_id for u in utterances):
            stream.write(f"{utt} {samples[utt]}\n")
    replace_dir(staging, out_dir)
    return count


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = sub.add_parser("format", help="stage 3")
    fmt.add_argument("--data_dir", type=Path, required=True)
    fmt.add_argument("--out_dir", type=Path, required=True)
    flt = sub.add_parser("filter", help="stage 4")
    flt.add_argument("--dump_dir", type=Path, required=True)
    flt.add_argument("--out_dir", type=Path, required=True)
    flt.add_argument("--min_seconds", type=float, default=0.1)
    flt.add_argument("--max_seconds", type=float, default=20.0)
    flt.add_argument("--max_text_chars", type=int, default=600)
    args = parser.parse_args(argv)
    if args.command == "format":
        count = format_dir(args.data_dir, args.out_dir)
        print(f"stage 3: {count} utterances checked into {args.out_dir}")
    else:
        count = filter_dir(args.dump_dir, args.out_dir, args.min_seconds, args.max_seconds, args.max_text_chars)
        print(f"stage 4: kept {count} utterances in {args.out_dir}")


if __name__ == "__main__":
    main()
