"""Audio a low-rank model is asked to recognise: refused in one line when it cannot be speech it was trained on.

ESPnet's ``Speech2Text`` takes any array: an empty one fails deep in the STFT with a traceback, NaN samples
decode to a silent empty or garbage hypothesis, and a stereo ``(samples, 2)`` array is quietly cut to its
first channel. The recipe trains on mono 16 kHz audio (stage 3 refuses anything else), so a model built
with our classes checks what its encoder is given when it is not training (decoding; validation too).
An array carries no sample rate: ``asr_inference``'s files are checked for it, and decoded whole first,
by :func:`check_audio_files`, which names the utterance.
"""

import functools
from pathlib import Path

import numpy as np
import soundfile
import torch

from espnet_lowrank.errors import InputError
from espnet_lowrank.kaldi_table import read_table


def check_speech(speech: torch.Tensor, lengths: torch.Tensor) -> None:
    """``speech``: ``(batch, samples)`` as ``ESPnetASRModel.encode`` takes it."""
    if speech.dim() == 3:
        raise InputError(f"speech of shape {tuple(speech.shape[1:])} has {speech.shape[-1]} channels; the model "
                         "takes mono audio, one channel of shape (samples,): average the channels or pick one")
    if speech.dim() != 2:
        raise InputError(f"speech of shape {tuple(speech.shape)}: the model takes mono audio of shape (samples,)")
    for index, length in enumerate(lengths.tolist()):
        where = "speech" if len(lengths) == 1 else f"utterance {index} of the batch"
        if length == 0:
            raise InputError(f"{where} holds no samples")
        bad = int((~torch.isfinite(speech[index, :length])).sum())
        if bad:
            raise InputError(f"{where} holds {bad} non-finite sample(s) (NaN or inf) among {length}")


def guard_inputs(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model.encode`` check its input while the model is not training."""
    encode = model.encode

    @functools.wraps(encode)
    def checked_encode(speech: torch.Tensor, speech_lengths: torch.Tensor, *args, **kwargs):
        if not model.training:
            check_speech(speech, speech_lengths)
        return encode(speech, speech_lengths, *args, **kwargs)

    model.encode = checked_encode
    return model


def check_audio_files(wav_scp: Path, sample_rate: int) -> None:
    """Every file ``wav_scp`` names passes stage 3's checks (decoded to its end, finite, mono, at
    ``sample_rate``), or the first that does not is named with its utterance."""
    for utt, path in read_table(wav_scp).items():
        if not path.endswith("|"):  # a command's output can only be checked by decoding it
            audio_samples(Path(path), sample_rate, where=f"{wav_scp}: utterance {utt}")


def audio_samples(path: Path, sample_rate: int, where: str) -> int:
    """The sample count of ``path`` once it passes every check, else a
    :class:`InputError` that starts with ``where``. The file is decoded to its
    end: a header can be fine and the data broken further in, which training
    would meet hours later."""
    if path.is_dir():
        raise InputError(f"{where}: {path} is a directory, not an audio file")
    if not path.is_file():
        raise InputError(f"{where}: audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
        decoded, non_finite = 0, 0
        with soundfile.SoundFile(str(path)) as stream:
            for block in stream.blocks(blocksize=1 << 16, dtype="float32"):
                decoded += len(block)
                non_finite += int((~np.isfinite(block)).sum())
    except Exception as error:
        raise InputError(f"{where}: cannot read {path}: {error}") from error
    if decoded != info.frames:
        raise InputError(f"{where}: {path} is cut short: its header says {info.frames} samples, {decoded} decode")
    if non_finite:
        raise InputError(f"{where}: {path} holds {non_finite} non-finite sample(s) (NaN or inf)")
    if info.frames == 0:
        raise InputError(f"{where}: {path} holds no audio (0 samples)")
    if info.channels != 1:
        raise InputError(
            f"{where}: {path} has {info.channels} channels; the recipe trains on mono audio "
            f"(down-mix it first, e.g. sox {path} -c 1 out.wav)"
        )
    if info.samplerate != sample_rate:
        raise InputError(
            f"{where}: {path} is sampled at {info.samplerate} Hz, the recipe expects {sample_rate} Hz"
        )
    return info.frames
