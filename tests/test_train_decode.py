"""Real ESPnet training through our entry point, then decoding with ESPnet's
own Speech2Text and asr_inference."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import soundfile
import torch
import yaml
from espnet2.bin.asr_inference import Speech2Text
from espnet_model_zoo.downloader import ModelDownloader

from espnet_lowrank.errors import InputError
from espnet_lowrank.model_config import build_model
from espnet_lowrank.stages.decode import decode
from espnet_lowrank.surgery import low_rank_layers
from espnet_lowrank.packing import pack_model
from espnet_lowrank.tools import convert
from espnet_lowrank.merging import merge
from tiny_data import train_command, write_tiny_data

CONF = Path(__file__).resolve().parent / "conf"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = write_tiny_data(root / "data")
    exp = root / "exp"
    result = subprocess.run(
        train_command(sys.executable, CONF / "tiny_lowrank.yaml", data, exp),
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"data": data, "exp": exp, "config": exp / "config.yaml", "model": exp / "1epoch.pth"}


def test_training_wrote_a_low_rank_checkpoint(trained):
    state = torch.load(trained["model"], map_location="cpu")
    assert "encoder.encoders.0.self_attn.linear_q.U" in state
    assert "encoder.encoders.0.self_attn.linear_q.weight" not in state
    assert "lowrank_conformer" in trained["config"].read_text()


def test_speech2text_reproduces_the_trained_encoder(trained):
    speech2text = Speech2Text(
        asr_train_config=str(trained["config"]), asr_model_file=str(trained["model"]),
        device="cpu", beam_size=2, ctc_weight=0.3, nbest=1,
    )
    reference = build_model(trained["config"])
    reference.load_state_dict(torch.load(trained["model"], map_location="cpu"), strict=True)
    reference.eval()
    assert len(low_rank_layers(speech2text.asr_model)) == len(low_rank_layers(reference)) == 31
    audio, _ = soundfile.read(trained["data"]["wav"], dtype="float32")
    speech = torch.from_numpy(audio)[None]
    lengths = torch.tensor([speech.shape[1]])
    with torch.no_grad():
        ours, _ = speech2text.asr_model.encode(speech, lengths)
        theirs, _ = reference.encode(speech, lengths)
    assert (ours - theirs).abs().max() <= 1e-5
    text, tokens, token_ids, hyp = speech2text(audio)[0]
    assert isinstance(text, str) and len(tokens) == len(token_ids)


def test_asr_inference_entry_point_decodes_every_utterance(trained, tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "espnet_lowrank.bin.asr_inference",
            "--asr_train_config", str(trained["config"]),
            "--asr_model_file", str(trained["model"]),
            "--data_path_and_name_and_type", f"{trained['data']['dir']}/wav.scp,speech,sound",
            "--output_dir", str(tmp_path), "--ngpu", "0", "--batch_size", "1",
            "--beam_size", "2", "--nbest", "1",
        ],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    decoded = (tmp_path / "1best_recog" / "text").read_text().splitlines()
    assert sorted(line.split(" ")[0] for line in decoded) == [f"utt{i:02d}" for i in range(6)]


@pytest.mark.parametrize("speech, message", [
    (numpy.zeros(0, dtype=numpy.float32), "speech holds no samples"),
    (numpy.array([0.1, numpy.nan, 0.2, numpy.inf] * 4000, dtype=numpy.float32),
     r"holds 8000 non-finite sample\(s\) \(NaN or inf\)"),
    (numpy.zeros((16000, 2), dtype=numpy.float32),
     r"speech of shape \(16000, 2\) has 2 channels; the model takes mono"),
])
def test_speech2text_refuses_audio_it_cannot_recognise_in_one_line(trained, speech, message):
    speech2text = Speech2Text(asr_train_config=str(trained["config"]), asr_model_file=str(trained["model"]))
    with pytest.raises(InputError, match=message):
        speech2text(speech)


@pytest.mark.parametrize("kind, message", [
    ("8k", "is sampled at 8000 Hz, the recipe expects 16000 Hz"),
    ("stereo", "has 2 channels; the recipe trains on mono audio"),
    ("empty", "holds no audio (0 samples)"),
    ("nan", "holds 16000 non-finite sample(s) (NaN or inf)"),
])
def test_asr_inference_names_the_utterance_whose_audio_it_cannot_use(trained, tmp_path, kind, message):
    audio = {"8k": (numpy.zeros(8000), 8000), "stereo": (numpy.zeros((16000, 2)), 16000),
             "empty": (numpy.zeros(0), 16000), "nan": (numpy.full(16000, numpy.nan), 16000)}[kind]
    soundfile.write(tmp_path / "bad.wav", audio[0].astype(numpy.float32), audio[1],
                    subtype="FLOAT" if kind == "nan" else None)
    (tmp_path / "wav.scp").write_text(f"utt00 {trained['data']['wav']}\nbad {tmp_path / 'bad.wav'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "espnet_lowrank.bin.asr_inference", "--asr_train_config", str(trained["config"]),
         "--asr_model_file", str(trained["model"]), "--data_path_and_name_and_type",
         f"{tmp_path / 'wav.scp'},speech,sound", "--output_dir", str(tmp_path / "out"), "--ngpu", "0",
         "--batch_size", "1", "--beam_size", "2", "--nbest", "1"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: ") and message in last, result.stderr[-2000:]
    assert f"utterance bad: {tmp_path / 'bad.wav'}" in last  # refused before the model loads


def test_speech2text_refuses_a_checkpoint_that_does_not_fit(trained, tmp_path):
    dense = build_model(CONF / "tiny_dense.yaml", token_list=trained["data"]["tokens"].read_text().split())
    checkpoint = tmp_path / "dense.pth"
    torch.save(dense.state_dict(), checkpoint)
    with pytest.raises(RuntimeError, match=r"missing keys \[.*encoder.encoders.0.feed_forward.w_1.U"):
        Speech2Text(asr_train_config=str(trained["config"]), asr_model_file=str(checkpoint), device="cpu")


def _dense_config(trained, tmp_path) -> Path:
    """The trained model's config.yaml with the dense twin's encoder and decoder."""
    config = yaml.safe_load(trained["config"].read_text())
    dense = yaml.safe_load((CONF / "tiny_dense.yaml").read_text())
    config.update({key: dense[key] for key in ("encoder", "encoder_conf", "decoder", "decoder_conf")})
    path = tmp_path / "dense_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_our_asr_inference_with_a_dense_config_refuses_a_low_rank_checkpoint(trained, tmp_path):
    """Stock ESPnet would load what fits of it into a dense model (and does, with the plugin installed:
    test_registration); our entry point refuses, whatever the config."""
    result = subprocess.run(
        [sys.executable, "-m", "espnet_lowrank.bin.asr_inference", "--asr_train_config",
         str(_dense_config(trained, tmp_path)), "--asr_model_file", str(trained["model"]),
         "--data_path_and_name_and_type", f"{trained['data']['dir']}/wav.scp,speech,sound",
         "--output_dir", str(tmp_path / "out"), "--ngpu", "0"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert re.search(r"does not fit the ESPnetASRModel its config builds.*unexpected keys "
                     r"\[decoder.decoders.0.feed_forward.w_1.U", result.stderr), result.stderr[-2000:]


def test_speech2text_with_a_dense_config_loads_its_own_checkpoint(trained, tmp_path):
    config = _dense_config(trained, tmp_path)
    dense = build_model(config)
    torch.save(dense.state_dict(), tmp_path / "dense.pth")
    speech2text = Speech2Text(asr_train_config=str(config), asr_model_file=str(tmp_path / "dense.pth"))
    for (name, a), b in zip(dense.state_dict().items(), speech2text.asr_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_parallel_decoding_jobs_divide_an_exported_omp_num_threads(trained, tmp_path, monkeypatch):
    """OMP_NUM_THREADS=2 exported and 2 jobs: each job runs 1 thread, as its log says."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    out = tmp_path / "decode"
    text = decode(trained["data"]["dir"], out, trained["config"], trained["model"], CONF.parents[1] / "conf" / "decode_asr_cpu.yaml",
                  nj=2)
    assert len(text.read_text().splitlines()) == 6
    for index in (1, 2):
        assert "asr_inference: 1 torch thread(s)" in (out / "logdir" / f"asr_inference.{index}.log").read_text()


STOCK_ESPNET_DECODE = """
import json, sys
import soundfile, torch
from espnet2.bin.asr_inference import Speech2Text
from espnet_model_zoo.downloader import ModelDownloader
from espnet2.tasks.asr import ASRTask

config, model_file, wav = sys.argv[1:]
model, _ = ASRTask.build_model_from_file(config, None, "cpu")
model.load_state_dict(torch.load(model_file, map_location="cpu"), strict=True)
speech2text = Speech2Text(asr_train_config=config, asr_model_file=model_file, beam_size=2, ctc_weight=0.3, nbest=1)
audio, _ = soundfile.read(wav, dtype="float32")
print(json.dumps({"text": speech2text(audio)[0][0], "plugin_imported": "espnet_lowrank" in sys.modules}))
"""


def test_merged_model_decodes_in_stock_espnet_as_the_low_rank_one(trained, tmp_path):
    result = merge(trained["config"], trained["model"], tmp_path / "merged", pack=tmp_path / "merged.zip")
    assert result["max_difference"] <= 1e-4
    assert result["merged_params"] > result["low_rank_params"]
    config = result["config"].read_text()
    assert "lowrank" not in config and "encoder: conformer" in config and "decoder: transformer" in config
    files = ModelDownloader(tmp_path / "cache").unpack_local_file(str(tmp_path / "merged.zip"))
    decoded = subprocess.run(  # from the pack, in ESPnet without the plugin's start-up hook
        [sys.executable, "-c", STOCK_ESPNET_DECODE, files["asr_train_config"], files["asr_model_file"],
         str(trained["data"]["wav"])],
        capture_output=True, text=True, env={**os.environ, "ESPNET_LOWRANK_AUTOLOAD": "0"},
    )
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    stock = json.loads(decoded.stdout.strip().splitlines()[-1])
    assert stock["plugin_imported"] is False
    low_rank = Speech2Text(asr_train_config=str(trained["config"]), asr_model_file=str(trained["model"]),
                           beam_size=2, ctc_weight=0.3, nbest=1)
    audio, _ = soundfile.read(trained["data"]["wav"], dtype="float32")
    assert stock["text"] == low_rank(audio)[0][0]


def test_merging_a_dense_model_is_refused(trained, tmp_path):
    with pytest.raises(InputError, match="builds no low-rank class"):
        merge(_dense_config(trained, tmp_path), trained["model"], tmp_path / "merged")


@pytest.fixture(scope="module")
def trained_guided(tmp_path_factory):
    root = tmp_path_factory.mktemp("guided")
    data = write_tiny_data(root / "data")
    exp = root / "exp"
    command = train_command(sys.executable, CONF / "tiny_lowrank_guided.yaml", data, exp)
    command[command.index("--max_epoch") + 1] = "2"  # 3 batches an epoch: the guides end in epoch 1
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"data": data, "exp": exp, "config": exp / "config.yaml"}


def test_guided_training_writes_guide_free_models(trained_guided):
    tokens = trained_guided["data"]["tokens"].read_text().split()
    plain = build_model(CONF / "tiny_lowrank.yaml", token_list=tokens).state_dict()
    schedule = {"encoder.lowrank_guide.step", "decoder.lowrank_guide.step"}
    for name in ("1epoch.pth", "2epoch.pth", "valid.acc.ave.pth"):
        state = torch.load(trained_guided["exp"] / name, map_location="cpu")
        # plain low rank's weights, plus the two schedule positions
        assert set(state) == set(plain) | schedule, name
        assert all(state[k].shape == v.shape for k, v in plain.items()), name
    assert "lowrank_guide" in trained_guided["config"].read_text()


def test_guided_pack_decodes_with_the_guard_on(trained_guided, tmp_path):
    exp = trained_guided["exp"]
    result = subprocess.run(
        [sys.executable, "-m", "espnet2.bin.pack", "asr", "--asr_train_config", str(exp / "config.yaml"),
         "--asr_model_file", str(exp / "valid.acc.ave.pth"), "--outpath", str(tmp_path / "asr_model.zip")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = ModelDownloader(tmp_path / "cache").unpack_local_file(str(tmp_path / "asr_model.zip"))
    speech2text = Speech2Text(**files, device="cpu", beam_size=2)
    tokens = trained_guided["data"]["tokens"].read_text().split()
    plain = build_model(CONF / "tiny_lowrank.yaml", token_list=tokens)
    assert sum(p.numel() for p in speech2text.asr_model.parameters()) == sum(p.numel() for p in plain.parameters())
    audio, _ = soundfile.read(trained_guided["data"]["wav"], dtype="float32")
    assert isinstance(speech2text(audio)[0][0], str)
    with pytest.raises(RuntimeError, match=r"missing keys \[.*feed_forward.w_1.U"):  # the guard is still on
        dense = build_model(CONF / "tiny_dense.yaml", token_list=tokens)
        torch.save(dense.state_dict(), tmp_path / "dense.pth")
        Speech2Text(asr_train_config=files["asr_train_config"], asr_model_file=str(tmp_path / "dense.pth"))


def test_a_guided_model_merges_without_its_schedule(trained_guided, tmp_path):
    exp = trained_guided["exp"]
    result = merge(exp / "config.yaml", exp / "valid.acc.ave.pth", tmp_path / "merged")
    state = torch.load(result["model"], map_location="cpu")
    assert not any("lowrank_guide" in key for key in state)
    assert "encoder.encoders.0.self_attn.linear_q.weight" in state and result["max_difference"] <= 1e-4


@pytest.fixture(scope="module")
def trained_dense(tmp_path_factory):
    """The tiny dense twin, trained with global feature statistics (a file its pack must carry)."""
    root = tmp_path_factory.mktemp("dense")
    data = write_tiny_data(root / "data")
    stats = root / "feats_stats.npz"
    numpy.savez(stats, count=numpy.array(100.0), sum=numpy.zeros(20), sum_square=100 * numpy.ones(20))
    command = train_command(sys.executable, CONF / "tiny_dense.yaml", data, root / "exp")
    command += ["--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats}"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"data": data, "exp": root / "exp", "stats": stats}


def test_a_packed_dense_model_converts_by_budget_into_a_pack_that_decodes(trained_dense, tmp_path):
    exp = trained_dense["exp"]
    dense_zip = pack_model(yaml.safe_load((exp / "config.yaml").read_text()), exp / "1epoch.pth", tmp_path / "dense.zip")
    dense_params = sum(p.numel() for p in build_model(exp / "config.yaml").parameters())
    trained_dense["stats"].rename(tmp_path / "elsewhere.npz")  # from here on, only the packs hold it
    convert.main(["--dense_model", str(dense_zip), "--param_ratio", "0.6", "--multiple_of", "2",
                  "--out", str(tmp_path / "lr" / "model.pth"), "--pack", str(tmp_path / "lr.zip")])
    files = ModelDownloader(tmp_path / "cache").unpack_local_file(str(tmp_path / "lr.zip"))
    speech2text = Speech2Text(**files, device="cpu", beam_size=2)
    ratio = sum(p.numel() for p in speech2text.asr_model.parameters()) / dense_params
    assert abs(ratio - 0.6) <= 0.01
    assert low_rank_layers(speech2text.asr_model)
    assert Path(yaml.safe_load(Path(files["asr_train_config"]).read_text())["normalize_conf"]["stats_file"]).is_file()
    audio, _ = soundfile.read(trained_dense["data"]["wav"], dtype="float32")
    assert isinstance(speech2text(audio)[0][0], str)
