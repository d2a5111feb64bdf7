"""Unit tests of the Python behind each run.sh stage."""

from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_lowrank.errors import InputError
from espnet_lowrank.data.kaldi_dir import Utterance, read_data_dir, write_data_dir
from espnet_lowrank.kaldi_table import read_table
from espnet_lowrank.stages import StageError, dump, score, speed_perturb, token_list
from espnet_lowrank.stages.decode import split_keys

TEXTS = ["THE RED CAT SEES A DOG", "MY OLD HORSE CARRIES TWO APPLES", "A BIRD SINGS", "THE KING READS"]


def make_dir(root: Path, seconds=(1.0, 0.5, 2.0, 0.05), rate=16000) -> Path:
    rows = []
    for index, (length, text) in enumerate(zip(seconds, TEXTS)):
        path = root / "audio" / f"spk1-{index}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(length * rate)) / rate
        soundfile.write(path, 0.2 * np.sin(2 * np.pi * 300 * t), rate)
        rows.append(Utterance(f"spk1-{index}", "spk1", str(path), text))
    write_data_dir(root / "data", rows)
    return root / "data"


def test_speed_perturbation_changes_length_and_prefixes_ids(tmp_path):
    data = make_dir(tmp_path)
    count = speed_perturb.perturb(data, tmp_path / "sp", tmp_path / "sp_audio", [0.9, 1.0, 1.1])
    assert count == 12
    rows = {u.utt_id: u for u in read_data_dir(tmp_path / "sp")}
    assert rows["sp1.1-spk1-0"].speaker == "sp1.1-spk1" and rows["sp1.1-spk1-0"].text == TEXTS[0]
    assert soundfile.info(rows["sp1.1-spk1-0"].audio).frames == pytest.approx(16000 / 1.1, abs=2)
    assert soundfile.info(rows["sp0.9-spk1-0"].audio).frames == pytest.approx(16000 / 0.9, abs=2)
    assert rows["spk1-0"].audio == read_data_dir(data)[0].audio


def test_format_counts_samples(tmp_path):
    data = make_dir(tmp_path)
    assert dump.format_dir(data, tmp_path / "dump") == 4
    assert read_table(tmp_path / "dump" / "utt2num_samples")["spk1-2"] == "32000"


def test_format_names_a_missing_audio_file(tmp_path):
    data = make_dir(tmp_path)
    (tmp_path / "audio" / "spk1-1.flac").unlink()
    with pytest.raises(InputError, match=r"stage 3: .*wav.scp: utterance spk1-1: audio file .*spk1-1.flac does not exist"):
        dump.format_dir(data, tmp_path / "dump")
    assert not (tmp_path / "dump").exists()


def test_format_names_an_unreadable_audio_file(tmp_path):
    data = make_dir(tmp_path)
    (tmp_path / "audio" / "spk1-2.flac").write_bytes(b"not audio at all")
    with pytest.raises(InputError, match=r"stage 3: .*utterance spk1-2: cannot read .*spk1-2.flac"):
        dump.format_dir(data, tmp_path / "dump")


@pytest.mark.parametrize("nj", [1, 2])
def test_format_decodes_every_file_to_its_end(tmp_path, nj):
    """A FLAC whose header is fine and whose data breaks past its first second: caught here, not in training."""
    data = make_dir(tmp_path, seconds=(1.0, 0.5, 3.0, 0.05))
    flac = tmp_path / "audio" / "spk1-2.flac"
    noise = np.random.default_rng(0).standard_normal(48000) * 0.1  # not compressible to a few frames
    soundfile.write(flac, noise, 16000)
    whole = flac.read_bytes()
    flac.write_bytes(whole[: int(len(whole) * 0.6)])  # cut short, the header still says 3 s
    assert soundfile.info(str(flac)).frames == 48000
    with pytest.raises(InputError, match=r"stage 3: .*utterance spk1-2: cannot read .*spk1-2.flac.*lost sync"):
        dump.format_dir(data, tmp_path / "dump", nj=nj)
    assert not (tmp_path / "dump").exists()


def test_format_names_non_finite_samples(tmp_path):
    data = make_dir(tmp_path)
    samples = np.zeros(16000, dtype=np.float32)
    samples[12345] = np.nan
    soundfile.write(tmp_path / "audio" / "spk1-0.flac", samples, 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(InputError, match=r"utterance spk1-0: .*spk1-0.flac holds 1 non-finite sample"):
        dump.format_dir(data, tmp_path / "dump", nj=2)


def test_format_names_a_transcript_without_audio(tmp_path):
    data = make_dir(tmp_path)
    with (data / "text").open("a") as stream:
        stream.write("spk1-9 AN ORPHAN TRANSCRIPT\n")
    with pytest.raises(StageError, match=r"stage 3: .*text: utterance spk1-9 has no audio in wav.scp"):
        dump.format_dir(data, tmp_path / "dump")


def test_format_refuses_another_sample_rate(tmp_path):
    data = make_dir(tmp_path, rate=8000)
    with pytest.raises(InputError, match=r"utterance spk1-0: .* 8000 Hz, the recipe expects 16000 Hz"):
        dump.format_dir(data, tmp_path / "dump")


def test_filter_by_duration_and_refuse_an_empty_result(tmp_path):
    dump.format_dir(make_dir(tmp_path), tmp_path / "org")
    assert dump.filter_dir(tmp_path / "org", tmp_path / "kept", 0.1, 1.5, 600) == 2
    assert sorted(read_table(tmp_path / "kept" / "text")) == ["spk1-0", "spk1-1"]
    with pytest.raises(StageError, match=r"stage 4: no utterance of .*org is between 30.0 and 40.0 s"):
        dump.filter_dir(tmp_path / "org", tmp_path / "none", 30.0, 40.0, 600)
    assert not (tmp_path / "none").exists()


def test_bpe_token_list(tmp_path):
    data = make_dir(tmp_path)
    path = token_list.write_token_list(data / "text", tmp_path / "tok", "bpe", nbpe=25, bpemode="unigram")
    tokens = path.read_text().split("\n")[:-1]
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert len(tokens) == 25 + 2 and len(set(tokens)) == len(tokens)
    assert (tmp_path / "tok" / "bpe.model").exists()


def test_char_token_list(tmp_path):
    path = token_list.write_token_list(make_dir(tmp_path) / "text", tmp_path / "tok", "char")
    tokens = path.read_text().split()
    assert "<space>" in tokens and "T" in tokens and tokens[-1] == "<sos/eos>"


def test_token_list_errors_name_the_option(tmp_path):
    text = make_dir(tmp_path) / "text"
    with pytest.raises(StageError, match=r"stage 5: --nbpe 5000 does not fit"):
        token_list.write_token_list(text, tmp_path / "tok", "bpe", nbpe=5000)
    with pytest.raises(StageError, match=r"--token_type 'word' is unknown"):
        token_list.write_token_list(text, tmp_path / "tok", "word")


def test_scores_count_substitutions_deletions_insertions():
    result = score.score(["a b c d", "e f"], ["a x c d", "e f g"], "word")
    assert (result.words, result.correct, result.substitutions, result.deletions, result.insertions) == (6, 5, 1, 0, 1)
    assert result.error_rate == pytest.approx(100 * 2 / 6)
    assert result.sentence_errors == 2
    chars = score.score(["ab cd"], ["ab c"], "char")
    assert (chars.words, chars.deletions) == (4, 1)


def test_score_set_and_results_markdown(tmp_path):
    (tmp_path / "ref").write_text("u1 THE CAT\nu2 A DOG\n")
    (tmp_path / "hyp").write_text("u1 THE CAT\nu2 A LOG\n")
    scores = score.score_set(tmp_path / "ref", tmp_path / "hyp")
    assert scores["WER"].error_rate == 25.0
    text = score.results_markdown("exp", "decode_asr_valid.acc.ave", "valid.acc.ave.pth", "conf/decode_asr.yaml",
                                  {"test": scores})
    assert "|test|2|4|75.0|25.0|0.0|0.0|25.0|50.0|" in text and "### CER" in text
    # the decode, its model and its config are each named once; rows name the test set
    assert "## decode_asr_valid.acc.ave\n- model: `valid.acc.ave.pth`\n- decoding config: `conf/decode_asr.yaml`" in text
    assert text.count("valid.acc.ave") == 2 and "decode_decode" not in text


def test_score_names_a_missing_hypothesis(tmp_path):
    (tmp_path / "ref").write_text("u1 THE CAT\nu2 A DOG\n")
    (tmp_path / "hyp").write_text("u1 THE CAT\n")
    with pytest.raises(StageError, match=r"stage 13: .*hyp has no hypothesis for 1 utterances .* u2"):
        score.score_set(tmp_path / "ref", tmp_path / "hyp")


def test_results_name_the_decode_dir_stage_13_scored_not_the_newest(tmp_path):
    """An exp dir decoded twice: `compare` must read the decode its own stage 13 scored."""
    (tmp_path / "data" / "test").mkdir(parents=True)
    (tmp_path / "data" / "test" / "text").write_text("u1 THE CAT\n")
    exp = tmp_path / "exp"
    for name, hypothesis in (("decode_asr_valid.acc.ave", "THE CAT"), ("decode_att_valid.acc.ave", "A DOG")):
        (exp / name / "test").mkdir(parents=True)
        (exp / name / "test" / "text").write_text(f"u1 {hypothesis}\n")
    results = exp / "RESULTS.md"
    score.main(["--decode_dir", str(exp / "decode_asr_valid.acc.ave"), "--data_root", str(tmp_path / "data"),
                "--test_sets", "test", "--out", str(results)])
    assert score.scored_decode_dir(results, "test") == exp / "decode_asr_valid.acc.ave"
    with pytest.raises(StageError, match=r"RESULTS.md scores no decode of test set 'test_other'"):
        score.scored_decode_dir(results, "test_other")
    with pytest.raises(StageError, match=r"missing/RESULTS.md does not exist: did stage 13 run\?"):
        score.scored_decode_dir(tmp_path / "missing" / "RESULTS.md", "test")


def test_split_keys_covers_every_key_once():
    keys = [f"u{i}" for i in range(10)]
    pieces = split_keys(keys, 3)
    assert [len(p) for p in pieces] == [4, 3, 3] and sum(pieces, []) == keys
    assert split_keys(keys[:2], 5) == [["u0"], ["u1"]]
