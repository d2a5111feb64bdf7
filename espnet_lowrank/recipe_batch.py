"""The mini-batch ESPnet's ``batch_type: numel`` sampler builds for a
``batch_bins``, so that ``bench`` times the batch a recipe trains on.

ESPnet counts a batch's bins as its utterance count × (longest waveform in
samples + longest token sequence × vocabulary size), sorted by length, and
closes a batch with the utterance that first makes it exceed ``batch_bins``.
Rather than restate that rule, the sampler itself is run: over a recipe's
shape files, or over a corpus of identical utterances written for it.
"""

import tempfile
from pathlib import Path
from typing import List, Sequence, Tuple

#: ESPnet's LibriSpeech-100 Conformer recipe (conf/tuning/
#: train_asr_conformer_lr2e-3_warmup15k_amp_nondeterministic.yaml upstream)
LIBRISPEECH_100_BATCH_BINS = 16_000_000
#: utterances written for the sampler when no shape files are given: more
#: than any batch of them can hold
UNIFORM_CORPUS = 4096


def recipe_batch(batch_bins: int, vocab: int, seconds: float = 12.0, text_length: int = 40,
                 shape_files: Sequence[str] = ()) -> Tuple[List[int], List[int]]:
    """Speech lengths (samples) and token counts of the batch ESPnet's
    ``NumElementsBatchSampler`` makes for ``batch_bins``.

    With ``shape_files`` (a recipe's ``speech_shape`` and ``text_shape.bpe``,
    as ESPnet's stats stage writes them): the middle batch of the sampler's
    length-sorted list. Without: utterances of ``seconds`` and
    ``text_length`` tokens over a ``vocab``-unit vocabulary, all alike."""
    from espnet2.samplers.num_elements_batch_sampler import NumElementsBatchSampler

    if batch_bins <= 0:
        raise ValueError(f"batch_bins={batch_bins}: must be a positive number of bins")
    with tempfile.TemporaryDirectory() as tmp:
        if not shape_files:
            shape_files = _uniform_shape_files(Path(tmp), round(seconds * 16000), text_length, vocab)
        for path in shape_files:
            if not Path(path).is_file():
                raise ValueError(f"shape file {path} not found (ESPnet's stats stage writes speech_shape "
                                 f"and text_shape.bpe under exp/asr_stats_*/train/)")
        sampler = NumElementsBatchSampler(batch_bins, list(map(str, shape_files)))
        batches = list(sampler)
        keys = batches[len(batches) // 2]
        shapes = [_read_shapes(path) for path in shape_files]
    speech = [shapes[0][key][0] for key in keys]
    text = [shapes[1][key][0] for key in keys] if len(shapes) > 1 else [text_length] * len(keys)
    return speech, text


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
