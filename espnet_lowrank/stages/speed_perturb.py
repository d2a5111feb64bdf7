"""Stage 2: speed perturbation (Kaldi/sox ``speed``: tempo and pitch change
together), with torchaudio. Perturbed copies get ``sp<factor>-`` prefixed
utterance and speaker ids and are written as flac under ``--audio_dir``."""

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

import soundfile
import torch
import torchaudio
from tqdm import tqdm

from espnet_lowrank.data.kaldi_dir import Utterance, read_data_dir, write_data_dir
from espnet_lowrank.errors import one_line_errors
from espnet_lowrank.stages import StageError


def change_speed(waveform: torch.Tensor, rate: int, factor: float) -> torch.Tensor:
    """Play ``factor`` times faster: resample to rate/factor, keep the rate."""
    if factor == 1.0:
        return waveform
    return torchaudio.functional.resample(waveform, int(round(rate * factor)), rate)


def perturb(data_dir: Path, out_dir: Path, audio_dir: Path, factors: Sequence[float]) -> int:
    utterances = read_data_dir(data_dir)
    rows: List[Utterance] = []
    for factor in factors:
        if factor <= 0:
            raise StageError(f"stage 2: speed factor {factor} must be positive")
        if factor == 1.0:
            rows += utterances
            continue
        prefix = f"sp{factor}-"
        target = Path(audio_dir) / f"sp{factor}"
        target.mkdir(parents=True, exist_ok=True)
        for utt in tqdm(utterances, desc=f"speed {factor}", unit="utt"):
            try:
                audio, rate = soundfile.read(utt.audio, dtype="float32", always_2d=True)
            except Exception as error:
                raise StageError(
                    f"stage 2: {data_dir}/wav.scp: utterance {utt.utt_id}: cannot read "
                    f"{utt.audio}: {error}"
                ) from error
            waveform = change_speed(torch.from_numpy(audio.T.copy()), rate, factor)
            path = target / f"{prefix}{utt.utt_id}.flac"
            soundfile.write(path, waveform.T.numpy(), rate)
            rows.append(Utterance(prefix + utt.utt_id, prefix + utt.speaker, str(path.resolve()), utt.text))
    return write_data_dir(out_dir, rows)


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--audio_dir", type=Path, required=True)
    parser.add_argument("--factors", type=float, nargs="+", required=True)
    args = parser.parse_args(argv)
    count = perturb(args.data_dir, args.out_dir, args.audio_dir, args.factors)
    print(f"stage 2: wrote {count} utterances to {args.out_dir}")


if __name__ == "__main__":
    main()
