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
    for name in files:  # every file, audio too (espeak-ng's noise once made a few utterances differ)
        assert hashlib.md5((first / name).read_bytes()).digest() == hashlib.md5((second / name).read_bytes()).digest()
    flac = next(first.rglob("*.flac"))
    info = soundfile.info(flac)
    assert info.samplerate == 16000 and info.duration > 0.5

    counts = {}
    speakers = {}
    for split in ("train", "dev", "test", "eval"):
        utterances = list(librispeech.iter_part(first, split))
        counts[split] = len(utterances)
        speakers[split] = {u.speaker for u in utterances}
    size = embedded_corpus.SIZES["tiny"]
    assert counts == {
        "train": size.train_voices * size.train_per_voice,
        "dev": len(embedded_corpus.DEV_VARIANTS) * size.dev_per_voice,
        "test": len(embedded_corpus.TEST_VARIANTS) * size.test_per_voice,
        "eval": len(embedded_corpus.EVAL_VARIANTS) * size.eval_per_voice,
    }
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["dev"]
    assert not speakers["eval"] & (speakers["train"] | speakers["dev"] | speakers["test"])
    assert not set(embedded_corpus.TRAIN_VARIANTS) & set(embedded_corpus.TEST_VARIANTS)
    variants = [embedded_corpus.TRAIN_VARIANTS, embedded_corpus.DEV_VARIANTS, embedded_corpus.TEST_VARIANTS]
    assert not set(embedded_corpus.EVAL_VARIANTS) & set().union(*variants)


def test_the_demo_eval_set_is_large_enough_to_measure_a_point():
    size = embedded_corpus.SIZES["demo"]
    assert len(embedded_corpus.EVAL_VARIANTS) >= 10
    assert len(embedded_corpus.EVAL_VARIANTS) * size.eval_per_voice >= 600


def test_a_corpus_made_before_eval_gains_eval_alone_and_the_same_one(tmp_path):
    root = embedded_corpus.synthesize(tmp_path / "new", "tiny", seed=0)
    old = embedded_corpus.synthesize(tmp_path / "old", "tiny", seed=0)
    for marker in old.glob(".embedded-*"):  # as a corpus made before eval existed leaves it
        marker.unlink()
    (old / ".embedded-tiny-0.complete").touch()
    for flac in (old / "eval").rglob("*"):
        flac.unlink() if flac.is_file() else None
    train_flac = next((old / "train").rglob("*.flac"))
    train_flac.write_bytes(b"touched")
    embedded_corpus.synthesize(tmp_path / "old", "tiny", seed=0)
    assert train_flac.read_bytes() == b"touched"  # train was not made again
    made = sorted(p.relative_to(old) for p in (old / "eval").rglob("*") if p.is_file())
    assert made and made == sorted(p.relative_to(root) for p in (root / "eval").rglob("*") if p.is_file())
    for name in made:
        assert (old / name).read_bytes() == (root / name).read_bytes()


def test_finished_corpus_is_not_made_twice(tmp_path):
    root = embedded_corpus.synthesize(tmp_path, "tiny", seed=0)
    flac = next(root.rglob("*.flac"))
    flac.write_bytes(b"touched")
    embedded_corpus.synthesize(tmp_path, "tiny", seed=0)
    assert flac.read_bytes() == b"touched"
