import hashlib
import random

import soundfile

from espnet_lowrank.data import embedded_corpus, librispeech
from espnet_lowrank.data.grammar import VOCABULARY, plural, sentence


def test_vocabulary_and_grammar():
    assert len(VOCABULARY) >= 200
    rng = random.Random(0)
    sentences = [sentence(rng) for _ in range(500)]
    assert len(set(sentences)) == 500
    used = {word for s in sentences for word in s.split()}
    assert len(used) >= 200
    assert [plural(n) for n in ("woman", "city", "church", "cat")] == ["women", "cities", "churches", "cats"]


def test_tiny_corpus_is_deterministic_held_out_and_librispeech_shaped(tmp_path):
    first = embedded_corpus.synthesize(tmp_path / "a", "tiny", seed=3)
    second = embedded_corpus.synthesize(tmp_path / "b", "tiny", seed=3)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        if name.suffix == ".txt":
            assert (first / name).read_text() == (second / name).read_text()
    flac = next(first.rglob("*.flac"))
    assert hashlib.md5(flac.read_bytes()).digest() == hashlib.md5((second / flac.relative_to(first)).read_bytes()).digest()
    info = soundfile.info(flac)
    assert info.samplerate == 16000 and info.duration > 0.5

    counts = {}
    speakers = {}
    for split in ("train", "dev", "test"):
        utterances = list(librispeech.iter_part(first, split))
        counts[split] = len(utterances)
        speakers[split] = {u.speaker for u in utterances}
    size = embedded_corpus.SIZES["tiny"]
    assert counts == {
        "train": size.train_voices * size.train_per_voice,
        "dev": len(embedded_corpus.DEV_VARIANTS) * size.dev_per_voice,
        "test": len(embedded_corpus.TEST_VARIANTS) * size.test_per_voice,
    }
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["dev"]
    assert not set(embedded_corpus.TRAIN_VARIANTS) & set(embedded_corpus.TEST_VARIANTS)


def test_finished_corpus_is_not_made_twice(tmp_path):
    root = embedded_corpus.synthesize(tmp_path, "tiny", seed=0)
    flac = next(root.rglob("*.flac"))
    flac.write_bytes(b"touched")
    embedded_corpus.synthesize(tmp_path, "tiny", seed=0)
    assert flac.read_bytes() == b"touched"
