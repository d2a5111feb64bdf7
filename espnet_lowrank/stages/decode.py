"""Stage 12: decode a test set with ``--inference_nj`` parallel
``asr_inference`` jobs (ESPnet's own main, with our classes registered) and
merge their 1-best texts into ``<out_dir>/text``; redone when the model, its
config, the data or the inference config changed, and one run at a time per
decode dir."""

import argparse
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from espnet_lowrank import atomic
from espnet_lowrank.kaldi_table import read_table
from espnet_lowrank.errors import nearly_full, one_line_errors, writing_into
from espnet_lowrank.stages import StageError, marker
from espnet_lowrank.stages.lock import exclusive
from espnet_lowrank.threads import job_environment


def split_keys(keys: Sequence[str], parts: int) -> List[List[str]]:
    """Contiguous, nearly equal, non-empty pieces of ``keys``."""
    parts = max(1, min(parts, len(keys)))
    size, extra = divmod(len(keys), parts)
    pieces, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        pieces.append(list(keys[start:end]))
        start = end
    return pieces


#: What ESPnet's beam search logs once per decoded utterance.
PER_UTTERANCE = "best hypo:"


def show_progress(jobs, logdir: Path, total: int, description: str, poll_seconds: float = 0.5) -> None:
    """A progress bar over every job's utterances, counted in their logs, until all jobs end."""
    with tqdm(total=total, desc=description, unit="utt") as bar:
        while True:
            running = any(process.poll() is None for process, _, _ in jobs)
            done = sum(
                (logdir / f"asr_inference.{index}.log").read_text(errors="replace").count(PER_UTTERANCE)
                for _, _, index in jobs
            )
            bar.update(min(done, total) - bar.n)
            if not running:
                return
            time.sleep(poll_seconds)


def decode(
    data_dir: Path, out_dir: Path, asr_train_config: Path, asr_model_file: Path,
    inference_config: Optional[Path], nj: int, ngpu: int = 0, job_threads: int = 0,
) -> Path:
    for path, option in ((asr_train_config, "--asr_train_config"), (asr_model_file, "--asr_model_file")):
        if not Path(path).is_file():
            raise StageError(f"stage 12: {option} {path} does not exist: did stage 11 finish?")
    if inference_config is not None and not Path(inference_config).is_file():
        raise StageError(f"stage 12: --inference_config {inference_config} does not exist")
    keys = sorted(read_table(data_dir / "wav.scp"))
    logdir = out_dir / "logdir"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    pieces = split_keys(keys, nj)
    env = job_environment(len(pieces), job_threads)
    jobs = []
    for index, piece in enumerate(pieces, 1):
        key_file = logdir / f"keys.{index}.scp"
        key_file.write_text("".join(f"{k} x\n" for k in piece))
        command = [
            sys.executable, "-m", "espnet_lowrank.bin.asr_inference",
            "--asr_train_config", str(asr_train_config), "--asr_model_file", str(asr_model_file),
            "--data_path_and_name_and_type", f"{data_dir}/wav.scp,speech,sound",
            "--key_file", str(key_file), "--output_dir", str(logdir / f"output.{index}"),
            "--ngpu", str(ngpu), "--batch_size", "1",
        ]
        if inference_config is not None:
            command += ["--config", str(inference_config)]
        log = (logdir / f"asr_inference.{index}.log").open("w")
        jobs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log, index))
    show_progress(jobs, logdir, len(keys), f"decoding {data_dir.name}")
    failed = []
    for process, log, index in jobs:
        if process.wait() != 0:
            failed.append(str(logdir / f"asr_inference.{index}.log"))
        log.close()
    if failed and nearly_full(logdir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir))  # the jobs could not log why
    if failed:
        raise StageError(f"stage 12: decoding {data_dir} failed; see {', '.join(failed)}")
    merged = {}
    for _, _, index in jobs:
        merged.update(read_table(logdir / f"output.{index}" / "1best_recog" / "text"))
    missing = [k for k in keys if k not in merged]
    # asr_inference writes no line for an utterance decoded to nothing
    text = "".join(f"{k} {merged.get(k, '')}\n" for k in keys)
    atomic.write_text(out_dir / "text", text)
    if missing:
        print(f"stage 12: {len(missing)} utterances decoded to empty text, e.g. {missing[0]}")
    return out_dir / "text"


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--asr_train_config", type=Path, required=True)
    parser.add_argument("--asr_model_file", type=Path, required=True)
    parser.add_argument("--inference_config", type=Path, default=None)
    parser.add_argument("--nj", type=int, default=1)
    parser.add_argument("--ngpu", type=int, default=0)
    parser.add_argument("--job_threads", type=int, default=0,
                        help="threads per job; 0: OMP_NUM_THREADS (else the cores) divided among the jobs")
    args = parser.parse_args(argv)
    inputs = [args.asr_model_file, args.asr_train_config, args.data_dir]
    if args.inference_config is not None:
        inputs.append(args.inference_config)
    with writing_into(args.out_dir), exclusive(args.out_dir):
        state = marker.describe([], [str(path) for path in inputs])
        done = args.out_dir / ".done"
        if marker.check(done, "12", "redo", "", state) == marker.SKIP:
            return
        path = decode(args.data_dir, args.out_dir, args.asr_train_config, args.asr_model_file,
                      args.inference_config, args.nj, args.ngpu, args.job_threads)
        marker.record(done, state, finished=True)
    print(f"stage 12: wrote {path}")


if __name__ == "__main__":
    main()
