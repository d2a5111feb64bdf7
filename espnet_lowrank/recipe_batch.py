"""The mini-batch ESPnet's ``batch_type: numel`` sampler builds for a
``batch_bins`` (or any sampler, for a training config), so that ``bench``
times the batch a recipe trains on.

ESPnet counts a batch's bins as its utterance count × (longest waveform in
samples + longest token sequence × vocabulary size), sorted by length, and
closes a batch with the utterance that first makes it exceed ``batch_bins``.
Rather than restate that rule, the sampler itself is run: over a recipe's
shape files, or over a corpus of identical utterances written for it.
``synthetic_batch`` fills such a batch with noise and token ids (``bench``
trains on it; the ``no_slower`` budget reads its layers' input shapes).
"""

import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from espnet_lowrank.errors import InputError

#: ESPnet's LibriSpeech-100 Conformer recipe (conf/tuning/
#: train_asr_conformer_lr2e-3_warmup15k_amp_nondeterministic.yaml upstream)
LIBRISPEECH_100_BATCH_BINS = 16_000_000
#: utterances written for the sampler when no shape files are given: more
#: than any batch of them can hold
UNIFORM_CORPUS = 4096


#: ESPnet's training defaults (``asr_train --help``) and the fold lengths run.sh gives
DEFAULT_SAMPLER = {"batch_type": "folded", "batch_size": 20, "batch_bins": 1_000_000, "fold_length": [80000, 150]}


def recipe_batch(batch_bins: int, vocab: int, seconds: float = 12.0, text_length: int = 40,
                 shape_files: Sequence[str] = ()) -> Tuple[List[int], List[int]]:
    """Speech lengths (samples) and token counts of the batch ESPnet's
    ``NumElementsBatchSampler`` makes for ``batch_bins``.

    With ``shape_files`` (a recipe's ``speech_shape`` and ``text_shape.bpe``,
    as ESPnet's stats stage writes them): the middle batch of the sampler's
    length-sorted list. Without: utterances of ``seconds`` and
    ``text_length`` tokens over a ``vocab``-unit vocabulary, all alike."""
    if batch_bins <= 0:
        raise InputError(f"batch_bins={batch_bins}: must be a positive number of bins")
    return config_batch({"batch_type": "numel", "batch_bins": batch_bins}, vocab, seconds, text_length, shape_files)


def config_batch(config: Mapping, vocab: int, seconds: float = 12.0, text_length: int = 40,
                 shape_files: Sequence[str] = ()) -> Tuple[List[int], List[int]]:
    """:func:`recipe_batch` for whatever sampler a training ``config`` asks for: its ``batch_type``,
    ``batch_size``, ``batch_bins`` and ``fold_length`` (ESPnet's defaults where it has none), given to
    ESPnet's own ``build_batch_sampler``."""
    from espnet2.samplers.build_batch_sampler import build_batch_sampler

    settings = {**DEFAULT_SAMPLER, **{key: config[key] for key in DEFAULT_SAMPLER if config.get(key)}}
    with tempfile.TemporaryDirectory() as tmp:
        if not shape_files:
            shape_files = _uniform_shape_files(Path(tmp), round(seconds * 16000), text_length, vocab)
        for path in shape_files:
            if not Path(path).is_file():
                raise InputError(f"shape file {path} not found (ESPnet's stats stage writes speech_shape "
                                 f"and text_shape.bpe under exp/asr_stats_*/train/)")
        sampler = build_batch_sampler(settings["batch_type"], int(settings["batch_size"]), int(settings["batch_bins"]),
                                      list(map(str, shape_files)), fold_lengths=settings["fold_length"])
        batches = list(sampler)
        keys = batches[len(batches) // 2]
        shapes = [_read_shapes(path) for path in shape_files]
    speech = [shapes[0][key][0] for key in keys]
    text = [shapes[1][key][0] for key in keys] if len(shapes) > 1 else [text_length] * len(keys)
    return speech, text


def synthetic_batch(batch: int, seconds: float, text_length: int, vocab: int, device,
                    speech_lengths: Optional[Sequence[int]] = None,
                    text_lengths: Optional[Sequence[int]] = None) -> Dict:
    """A fixed batch of realistic shape: noise speech, random token ids, and
    the given lengths, or lengths falling from 100% to 80% as in a
    length-sorted batch."""
    generator = torch.Generator().manual_seed(0)
    if speech_lengths is None:
        samples = int(seconds * 16000)
        speech_lengths = torch.linspace(samples, 0.8 * samples, batch).long().tolist()
        text_lengths = torch.linspace(text_length, 0.8 * text_length, batch).long().tolist()
    lengths, text_lengths = torch.tensor(speech_lengths), torch.tensor(text_lengths)
    speech = 0.1 * torch.randn(len(lengths), int(lengths.max()), generator=generator)
    text = torch.randint(1, vocab - 1, (len(lengths), int(text_lengths.max())), generator=generator)
    return {
        "speech": speech.to(device), "speech_lengths": lengths.to(device),
        "text": text.to(device), "text_lengths": text_lengths.to(device),
    }


def _uniform_shape_files(directory: Path, samples: int, tokens: int, vocab: int) -> List[str]:
    speech, text = directory / "speech_shape", directory / "text_shape.bpe"
    names = [f"utt{i:05d}" for i in range(UNIFORM_CORPUS)]
    speech.write_text("".join(f"{name} {samples}\n" for name in names))
    text.write_text("".join(f"{name} {tokens},{vocab}\n" for name in names))
    return [str(speech), str(text)]


def _read_shapes(path) -> dict:
    shapes = {}
    for line in Path(path).read_text().splitlines():
        key, shape = line.split(maxsplit=1)
        shapes[key] = [int(n) for n in shape.split(",")]
    return shapes
