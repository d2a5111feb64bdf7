"""Stages 3 and 4: check every audio file and write the dump dir ESPnet
trains from (wav.scp, text, utt2spk, spk2utt, utt2num_samples), then filter
by length.

Stage 3 decodes every file to its end (over ``--nj`` processes) and checks
what training assumes (a regular, readable, non-empty, mono file at the
recipe's rate, whole, with finite samples), so a bad one stops here, named
with its utterance, rather than inside a DataLoader worker hours into
training. Stage 4 lists what it drops, and why, in ``<out_dir>/dropped``.
"""

import argparse
import contextlib
import multiprocessing
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

from tqdm import tqdm

from espnet_lowrank.data.kaldi_dir import read_data_dir, replace_dir, write_data_dir
from espnet_lowrank.errors import InputError, leave_ctrl_c_to_the_parent, one_line_errors, writing_into
from espnet_lowrank.kaldi_table import read_table
from espnet_lowrank.speech_input import audio_samples
from espnet_lowrank.stages import StageError


def format_dir(data_dir: Path, out_dir: Path, sample_rate: int = 16000, nj: int = 1) -> int:
    """Stage 3: verify the audio of every utterance, decoding it whole, and count its samples
    (``nj`` processes)."""
    try:
        utterances = read_data_dir(data_dir)
    except InputError as error:
        raise StageError(f"stage 3: {error}") from error
    jobs = [(Path(utt.audio), sample_rate, f"stage 3: {data_dir}/wav.scp: utterance {utt.utt_id}")
            for utt in utterances]
    with contextlib.ExitStack() as stack:
        if nj > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(
                nj, initializer=leave_ctrl_c_to_the_parent))
            counts = pool.imap(_audio_samples_of, jobs, chunksize=8)
        else:
            counts = map(_audio_samples_of, jobs)
        progress = tqdm(counts, total=len(jobs), desc=f"decoding {data_dir.name}", unit="utt")
        samples = {utt.utt_id: count for utt, count in zip(utterances, progress)}
    return _write_dump(out_dir, utterances, samples)


def _audio_samples_of(job) -> int:
    return audio_samples(*job)


def filter_dir(
    dump_dir: Path, out_dir: Path, min_seconds: float, max_seconds: float,
    max_text_chars: int, sample_rate: int = 16000,
) -> int:
    """Stage 4: keep utterances with min ≤ duration ≤ max and a transcript of
    1 to ``max_text_chars`` characters."""
    utterances = read_data_dir(dump_dir)
    samples = {k: int(v) for k, v in read_table(dump_dir / "utt2num_samples").items()}
    kept, dropped = [], []
    for utt in utterances:
        seconds = samples[utt.utt_id] / sample_rate
        if not min_seconds <= seconds <= max_seconds:
            dropped.append(f"{utt.utt_id} {seconds:.2f} s is outside {min_seconds}-{max_seconds} s")
        elif not utt.text.strip():
            dropped.append(f"{utt.utt_id} empty transcript")
        elif len(utt.text) > max_text_chars:
            dropped.append(f"{utt.utt_id} transcript of {len(utt.text)} characters, over {max_text_chars}")
        else:
            kept.append(utt)
    if not kept:
        raise StageError(
            f"stage 4: no utterance of {dump_dir} is between {min_seconds} and {max_seconds} s "
            f"with a transcript of 1 to {max_text_chars} characters; nothing to train on"
        )
    return _write_dump(out_dir, kept, samples, dropped)


def _write_dump(out_dir: Path, utterances, samples: Dict[str, int], dropped: Optional[Sequence[str]] = None) -> int:
    """A Kaldi dir plus utt2num_samples (and the ``dropped`` list), in place at once."""
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    count = write_data_dir(staging, utterances)
    with (staging / "utt2num_samples").open("w") as stream:
        for utt in sorted(u.utt_id for u in utterances):
            stream.write(f"{utt} {samples[utt]}\n")
    if dropped is not None:
        (staging / "dropped").write_text("".join(f"{line}\n" for line in dropped))
    replace_dir(staging, out_dir)
    return count


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = sub.add_parser("format", help="stage 3")
    fmt.add_argument("--data_dir", type=Path, required=True)
    fmt.add_argument("--out_dir", type=Path, required=True)
    fmt.add_argument("--nj", type=int, default=1, help="processes decoding the audio")
    flt = sub.add_parser("filter", help="stage 4")
    flt.add_argument("--dump_dir", type=Path, required=True)
    flt.add_argument("--out_dir", type=Path, required=True)
    flt.add_argument("--min_seconds", type=float, default=0.1)
    flt.add_argument("--max_seconds", type=float, default=20.0)
    flt.add_argument("--max_text_chars", type=int, default=600)
    args = parser.parse_args(argv)
    if args.command == "format":
        with writing_into(args.out_dir):
            count = format_dir(args.data_dir, args.out_dir, nj=args.nj)
        print(f"stage 3: {count} utterances checked into {args.out_dir}")
    else:
        with writing_into(args.out_dir):
            count = filter_dir(args.dump_dir, args.out_dir, args.min_seconds, args.max_seconds,
                               args.max_text_chars)
        dropped = len((args.out_dir / "dropped").read_text().splitlines())
        print(f"stage 4: kept {count} utterances in {args.out_dir}, dropped {dropped}"
              + (f" (listed in {args.out_dir / 'dropped'})" if dropped else ""))


if __name__ == "__main__":
    main()
