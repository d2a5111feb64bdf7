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

import torch

from espnet_lowrank.errors import InputError


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
    from espnet_lowrank.data.kaldi_dir import read_table
    from espnet_lowrank.stages.dump import audio_samples

    for utt, path in read_table(wav_scp).items():
        if not path.endswith("|"):  # a command's output can only be checked by decoding it
            audio_samples(Path(path), sample_rate, where=f"{wav_scp}: utterance {utt}")
