"""run.sh as a user runs it: options, bad input, the whole pipeline on a tiny
embedded corpus, markers, resume after kill -9, and the packed model."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tiny_recipe import ROOT, SPEED_PERTURB, TINY, TINY_CONFIG, kill_when_written, recipe_dir, run


def test_help_lists_the_options(tmp_path):
    result = run(recipe_dir(tmp_path), "--help")
    for option in ("--stage", "--stop_stage", "--ngpu", "--nj", "--inference_nj", "--train_set",
                   "--valid_set", "--test_sets", "--asr_config", "--inference_config", "--asr_tag",
                   "--nbpe", "--bpemode", "--speed_perturb_factors", "--inference_asr_model",
                   "--expdir", "--dumpdir"):
        assert option in result.stdout


def test_unknown_option_is_named(tmp_path):
    result = run(recipe_dir(tmp_path), "--stopstage", "3", check=False)
    assert result.returncode != 0 and "unknown option --stopstage" in result.stderr


def test_a_missing_init_param_is_named(tmp_path):
    result = run(recipe_dir(tmp_path), "--init_param", "exp/nope.pth:encoder:encoder", check=False)
    assert result.returncode != 0 and "--init_param: exp/nope.pth does not exist" in result.stderr


def test_a_bad_job_threads_is_named(tmp_path):
    result = run(recipe_dir(tmp_path), "--job_threads", "two", check=False)
    assert result.returncode != 0 and "--job_threads must be a whole number >= 0, not 'two'" in result.stderr


def test_a_stage_without_its_inputs_says_which_stage_to_run(tmp_path):
    result = run(recipe_dir(tmp_path), "--stage", "11", "--stop_stage", "11", check=False)
    assert result.returncode != 0
    assert "stage 11 needs dump/raw/train (made by stages 3-4)" in result.stderr


def test_missing_config_is_named(tmp_path):
    result = run(recipe_dir(tmp_path), "--asr_config", "conf/nope.yaml", check=False)
    assert result.returncode != 0 and "--asr_config conf/nope.yaml does not exist" in result.stderr


@pytest.mark.slow
def test_pipeline_scores_and_packs(pipeline):
    exp = pipeline["exp"]
    results = (exp / "RESULTS.md").read_text()
    assert "### WER" in results and "### CER" in results
    rows = [line for line in results.splitlines() if line.startswith("|decode_")]
    assert len(rows) == 2 and all(len(row.split("|")) == 11 for row in rows)
    assert float(rows[0].split("|")[8]) >= 0  # Err column is a number
    train = (pipeline["recipe"] / "data" / "train_sp" / "wav.scp").read_text()
    assert "sp0.9-" in train and "sp1.1-" in train
    assert (exp / "asr_model.zip").exists()


@pytest.mark.slow
def test_packed_model_decodes_through_speech2text(pipeline, tmp_path):
    import soundfile
    from espnet2.bin.asr_inference import Speech2Text
    from espnet_model_zoo.downloader import ModelDownloader

    import espnet_lowrank  # noqa: F401

    files = ModelDownloader(tmp_path).unpack_local_file(str(pipeline["exp"] / "asr_model.zip"))
    speech2text = Speech2Text(**files, device="cpu", beam_size=2)
    wav = next((pipeline["recipe"] / "downloads").rglob("*.flac"))
    audio, _ = soundfile.read(wav, dtype="float32")
    text, *_ = speech2text(audio)[0]
    assert isinstance(text, str)


@pytest.mark.slow
def test_bench_times_decoding_with_the_trained_model(pipeline, tmp_path):
    recipe, exp = pipeline["recipe"], pipeline["exp"]
    decode_config = tmp_path / "decode.yaml"
    decode_config.write_text("beam_size: 2\nctc_weight: 0.3\n")
    result = subprocess.run(
        [sys.executable, "-m", "espnet_lowrank.cli", "bench", str(TINY_CONFIG), str(TINY_CONFIG),
         "--vocab", "20", "--batch", "1", "--seconds", "1", "--text_length", "3", "--repeats", "1",
         "--warmup", "0", "--device", "cpu", "--json", "--decode_exp", str(exp), str(exp),
         "--decode_wav_scp", str(recipe / "dump" / "raw" / "test" / "wav.scp"), "--decode_utts", "2",
         "--decode_config", str(decode_config)],
        cwd=recipe, capture_output=True, text=True, timeout=600,  # config.yaml paths are relative to it
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = json.loads(result.stdout)["results"]
    assert len(first["decode_rtf"]) == len(second["decode_rtf"]) == 2
    assert all(rtf > 0 for rtf in first["decode_rtf"] + second["decode_rtf"])
    assert second["decode_rtf_speedup"] > 0


@pytest.mark.slow
def test_the_console_shows_each_epoch_and_a_decoding_progress_bar(pipeline):
    assert re.search(r"stage 11: epoch 1/2  train loss [\d.e+]+  valid acc [\d.]+  cer_ctc [\d.]+  \d+ s  ETA",
                     pipeline["log"])
    assert "stage 11: epoch 2/2" in pipeline["log"] and "stage 11: training finished" in pipeline["log"]
    assert re.search(r"decoding test: 100%\|.*\| (\d+)/\1 ", pipeline["log"])
    assert "epoch results" in (pipeline["exp"] / "train.log").read_text()  # the full log is still there


@pytest.mark.slow
def test_training_from_other_inputs_stops_saying_what_changed(pipeline):
    exp = pipeline["exp"]
    before = (exp / "RESULTS.md").read_text()
    result = run(pipeline["recipe"], *TINY, *SPEED_PERTURB, "--nbpe", "30",
                 "--stage", "5", check=False)
    assert result.returncode != 0
    assert ("stage 11: exp/asr_tiny_lowrank was made from other inputs: data/token_list/train_sp/unigram30 "
            "is a new input; data/token_list/train_sp/unigram40 is no longer an input") in result.stderr
    assert "Use another --asr_tag to train from them, or delete exp/asr_tiny_lowrank" in result.stderr
    assert "Traceback" not in result.stderr
    assert (exp / "RESULTS.md").read_text() == before
    assert (pipeline["recipe"] / "data" / "token_list" / "train_sp" / "unigram30" / "tokens.txt").exists()


@pytest.mark.slow
def test_a_changed_length_filter_redoes_stage_4(pipeline):
    recipe = pipeline["recipe"]
    result = run(recipe, *TINY, *SPEED_PERTURB, "--stage", "4", "--stop_stage", "4",
                 "--max_wav_duration", "3")
    assert "stage 4: redoing dump/raw/train_sp: --max_wav_duration was '20', now '3'" in result.stderr
    dropped = (recipe / "dump" / "raw" / "train_sp" / "dropped").read_text().splitlines()
    assert dropped and all("is outside 0.1-3.0 s" in line for line in dropped)
    assert f"dropped {len(dropped)} (listed in dump/raw/train_sp/dropped)" in result.stdout
    run(recipe, *TINY, *SPEED_PERTURB, "--stage", "4", "--stop_stage", "4")  # as before


@pytest.mark.slow
def test_finished_stages_are_not_redone(pipeline):
    before = (pipeline["exp"] / "RESULTS.md").read_text()
    started = time.time()
    result = run(pipeline["recipe"], *TINY, *SPEED_PERTURB, "--stop_stage", "12")
    assert result.stderr.count("already done") >= 8
    assert time.time() - started < pipeline["seconds"] / 2
    assert (pipeline["exp"] / "RESULTS.md").read_text() == before


@pytest.mark.slow
def test_missing_audio_stops_stage_3_and_keeps_earlier_outputs(pipeline):
    recipe = pipeline["recipe"]
    shutil.copytree(recipe / "data" / "test", recipe / "data" / "broken")
    wav_scp = recipe / "data" / "broken" / "wav.scp"
    first = wav_scp.read_text().splitlines()[0]
    utt, path = first.split(" ", 1)
    wav_scp.write_text(wav_scp.read_text().replace(path, path + ".gone"))
    result = run(recipe, *TINY, "--stage", "3", "--stop_stage", "3", "--test_sets", "broken", check=False)
    assert result.returncode != 0
    assert f"stage 3: data/broken/wav.scp: utterance {utt}: audio file {path}.gone does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert (recipe / "data" / "broken" / "text").exists() and (recipe / "dump" / "raw" / "test" / "wav.scp").exists()
    assert not (recipe / "dump" / "raw" / "org" / "broken").exists()


@pytest.mark.slow
def test_training_resumes_after_kill_9(pipeline):
    recipe = pipeline["recipe"]
    exp = recipe / "exp" / "asr_resume"
    options = [*TINY, "--asr_tag", "resume", "--stage", "11", "--stop_stage", "11",
               *SPEED_PERTURB, "--job_threads", "2",
               "--asr_args", "--max_epoch 3 --batch_size 2 --batch_type unsorted"]
    kill_when_written(recipe, options, exp / "1epoch.pth")
    assert not (exp / "3epoch.pth").exists() and not (exp / ".done").exists()
    first_epoch = (exp / "1epoch.pth").stat().st_mtime_ns
    run(recipe, *options)
    assert (exp / "3epoch.pth").exists() and (exp / ".done").exists()
    assert (exp / "1epoch.pth").stat().st_mtime_ns == first_epoch  # epoch 1 was not trained again
    assert "resumed" in (exp / "train.log").read_text().lower()
    # --job_threads reaches a run's one training process (run() exports OMP_NUM_THREADS=1)
    assert "asr_train: 2 torch thread(s)" in (exp / "train.log").read_text()


@pytest.mark.slow
def test_dense_warmup_then_low_rank_each_phase_resumes_after_kill_9(pipeline):
    import torch

    from espnet_lowrank.tools.compare import training_history

    recipe = pipeline["recipe"]
    exp = recipe / "exp" / "asr_warmup"
    warmup = exp / "dense_warmup"
    options = [*TINY, "--asr_tag", "warmup", "--stage", "11", "--stop_stage", "11",
               *SPEED_PERTURB, "--lowrank_warmup_epochs", "2",
               "--asr_args", "--max_epoch 4 --batch_size 2 --batch_type unsorted"]
    kill_when_written(recipe, options, warmup / "1epoch.pth")  # in the dense phase
    assert not (warmup / ".done").exists()
    dense_first = (warmup / "1epoch.pth").stat().st_mtime_ns
    kill_when_written(recipe, options, exp / "1epoch.pth")  # in the low-rank phase
    assert (warmup / ".done").exists() and (warmup / "1epoch.pth").stat().st_mtime_ns == dense_first
    lowrank_first = (exp / "1epoch.pth").stat().st_mtime_ns
    run(recipe, *options)
    assert (exp / ".done").exists() and (exp / "1epoch.pth").stat().st_mtime_ns == lowrank_first
    # 4 epochs in all: 2 dense, then 2 low rank from the factorised dense weights
    assert (exp / "2epoch.pth").exists() and not (exp / "3epoch.pth").exists()
    dense = torch.load(warmup / "2epoch.pth")
    start = torch.load(warmup / "lowrank_init.pth")
    name = "encoder.encoders.0.self_attn.linear_q"
    rank = start[f"{name}.U"].shape[1]
    left, singular, right = torch.linalg.svd(dense[f"{name}.weight"].double())
    torch.testing.assert_close((start[f"{name}.U"] @ start[f"{name}.V"]).double(),
                               left[:, :rank] @ torch.diag(singular[:rank]) @ right[:rank], atol=1e-5, rtol=1e-5)
    assert f"{name}.U" in torch.load(exp / "2epoch.pth")
    assert "lowrank_init.pth" in (exp / "train.log").read_text()
    assert training_history(exp)["epochs"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_cpu_processes_train_and_resume_after_one_is_killed(pipeline):
    """torchrun, gloo: both ranks log, a kill -9 of one rank stops the run, and a re-run resumes."""
    recipe = pipeline["recipe"]
    exp = recipe / "exp" / "asr_ddp"
    options = [*TINY, "--asr_tag", "ddp", "--stage", "11", "--stop_stage", "11", "--num_procs", "2",
               *SPEED_PERTURB,
               "--asr_args", "--max_epoch 2 --batch_size 4 --batch_type unsorted"]
    process = subprocess.Popen([str(ROOT / "run.sh"), "--python", sys.executable, *options], cwd=recipe,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 300
    while not (exp / "1epoch.pth").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    (launcher,) = subprocess.run(["pgrep", "-f", "--", f"torch.distributed.run .*{exp.name} "],
                                 capture_output=True, text=True).stdout.split()
    ranks = subprocess.run(["pgrep", "-P", launcher], capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2, ranks
    os.kill(int(ranks[1]), signal.SIGKILL)
    assert process.wait(timeout=120) != 0 and "stage 11 failed" in process.stderr.read()
    assert not (exp / ".done").exists()
    first_epoch = (exp / "1epoch.pth").stat().st_mtime_ns
    result = run(recipe, *options)
    assert (exp / ".done").exists() and (exp / "1epoch.pth").stat().st_mtime_ns == first_epoch
    log = (exp / "train.log").read_text()
    assert "stage 11: 2 training process(es), 1 thread(s) each" in result.stderr  # OMP_NUM_THREADS=1 divided
    assert ":0/2]" in log and "stage 11: epoch 2/2" in result.stderr  # rank 0 of a world of 2 (the others log warnings only)
    assert "all 2 ranks hold identical weights" in log


@pytest.mark.slow
def test_guided_training_on_two_cpu_processes(pipeline):
    """The guides take no part in the loss once their weight is 0: DDP is told (--unused_parameters)."""
    recipe = pipeline["recipe"]
    exp = recipe / "exp" / "asr_ddp_guided"
    run(recipe, *TINY, "--asr_tag", "ddp_guided", "--stage", "11", "--stop_stage", "11", "--num_procs", "2",
        *SPEED_PERTURB, "--asr_config", str(ROOT / "tests" / "conf" / "tiny_lowrank_guided.yaml"),
        "--asr_args", "--max_epoch 2 --batch_size 4 --batch_type unsorted")
    assert (exp / "2epoch.pth").exists() and "--unused_parameters true" in (exp / "train.log").read_text()


def test_warmup_needs_fewer_epochs_than_max_epoch(tmp_path):
    from espnet_lowrank.stages.warmup import lowrank_epochs

    from espnet_lowrank.stages import StageError

    assert lowrank_epochs(TINY_CONFIG, 2, "--max_epoch 5 --batch_size 2") == 3
    with pytest.raises(StageError, match="--lowrank_warmup_epochs 5 must be at least 1 and less than max_epoch"):
        lowrank_epochs(TINY_CONFIG, 5, "--max_epoch=5")


def test_a_dense_config_trains_as_it_is_under_a_warmup_default(capsys):
    from espnet_lowrank.stages.warmup import lowrank_epochs

    assert lowrank_epochs(ROOT / "tests" / "conf" / "tiny_dense.yaml", 2, "--max_epoch 5") == 0
    assert "is dense: --lowrank_warmup_epochs 2 has nothing to factorise" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["librispeech_100", "librispeech"])
def test_the_librispeech_recipes_warm_up_within_their_configs_epochs(recipe):
    """Their run.sh defaults to a dense warm-up that must leave low-rank epochs."""
    from espnet_lowrank.stages.warmup import lowrank_epochs

    wrapper = (ROOT / "egs2" / recipe / "asr1" / "run.sh").read_text()
    config = re.search(r"^\s+--asr_config (\S+)", wrapper, re.M).group(1)
    warmup = int(re.search(r"^\s+--lowrank_warmup_epochs (\d+)", wrapper, re.M).group(1))
    total = yaml.safe_load((ROOT / config).read_text())["max_epoch"]
    assert lowrank_epochs(ROOT / config, warmup, "") == total - warmup >= 0.75 * total


@pytest.mark.slow
def test_bring_your_own_data_dir_enters_at_stage_2(pipeline):
    """Any Kaldi-style dir under data/ can be named and enter at stage 2."""
    recipe = pipeline["recipe"]
    for name, source in (("my_train", "train"), ("my_dev", "dev")):
        shutil.copytree(recipe / "data" / source, recipe / "data" / name)
    result = run(recipe, *TINY, "--corpus", "none", "--stage", "2", "--stop_stage", "5",
                 "--train_set", "my_train", "--valid_set", "my_dev", "--test_sets", "my_dev",
                 "--datadir", "data", "--dumpdir", "dump_mine", "--nbpe", "30")
    assert (recipe / "dump_mine" / "raw" / "my_train" / "utt2num_samples").exists()
    assert (recipe / "data" / "token_list" / "my_train" / "unigram30" / "tokens.txt").exists()  # its own
    assert "stage 2" not in result.stderr  # no --speed_perturb_factors: nothing to do


@pytest.mark.slow
def test_budget_study_converts_fine_tunes_from_the_converted_weights_merges_and_tabulates(pipeline, tmp_path,
                                                                                          monkeypatch):
    """Dense twin -> budget_study: convert --param_ratio, decode, run.sh --init_param, decode, merge, decode."""
    import torch

    from espnet_lowrank.tools import budget_study

    recipe = pipeline["recipe"]
    data = ["--embedded_size", "tiny", "--token_type", "bpe", "--nbpe", "40", *SPEED_PERTURB,
            "--inference_nj", "1"]
    run(recipe, *data, "--stage", "11", "--stop_stage", "11",
        "--asr_config", str(ROOT / "tests" / "conf" / "tiny_dense.yaml"), "--asr_tag", "dense_twin",
        "--asr_args", "--max_epoch 1 --batch_size 8 --batch_type unsorted")
    monkeypatch.chdir(recipe)  # the tool moves there; this puts the test's cwd back afterwards
    out = tmp_path / "results" / "budget"
    arguments = ["--recipe_dir", str(recipe), "--dense_tag", "dense_twin", "--ratios", "0.6", "--fine_tune_epochs",
                 "1", "--multiple_of", "2", "--inference_nj", "1", "--out", str(out),
                 "--", *data, "--asr_args", "--max_epoch 5 --batch_size 8 --batch_type unsorted"]
    budget_study.main(arguments)
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [row["name"] for row in rows] == ["dense", "convert 0.60", "convert 0.60 + 1 epochs",
                                             "convert 0.60 + 1 epochs, merged"]
    dense, converted, tuned, merged = rows
    assert abs(converted["params"] / dense["params"] - 0.6) <= 0.01 and tuned["params"] == converted["params"]
    assert merged["params"] == dense["params"] and merged["differing"] == 0
    assert (merged["wer"], merged["cer"]) == (tuned["wer"], tuned["cer"])
    assert tuned["fine_tune_seconds"] > 0 and all(row["decode_seconds"] > 0 for row in rows)
    table = out.with_suffix(".md").read_text()
    assert table.startswith("```bash\npython -m espnet_lowrank.tools.budget_study --recipe_dir")
    assert len([line for line in table.splitlines() if line.startswith("| convert")]) == 3
    assert "merged from on 0 of" in table
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the fine-tuning ran 1 epoch (the tool's --max_epoch wins), from the converted weights
    converted_dir = recipe / "exp" / "budget_dense_twin" / "r0.60"
    tuned_dir = recipe / "exp" / "asr_dense_twin_budget0.60_ft1"
    assert (tuned_dir / "1epoch.pth").exists() and not (tuned_dir / "2epoch.pth").exists()
    start, after = torch.load(converted_dir / "model.pth"), torch.load(tuned_dir / "1epoch.pth")
    name = next(key for key in start if key.startswith("encoder.") and key.endswith(".U"))[:-2]
    moved = (after[f"{name}.U"] @ after[f"{name}.V"] - start[f"{name}.U"] @ start[f"{name}.V"]).norm()
    assert 0 < moved < 0.5 * (start[f"{name}.U"] @ start[f"{name}.V"]).norm()  # one epoch on, not a fresh start
    # finished steps are reused: a second call decodes nothing again
    budget_study.main(arguments)
    assert json.loads(out.with_suffix(".json").read_text()) == rows


def test_budget_study_names_a_missing_dense_run(tmp_path, monkeypatch):
    from espnet_lowrank.tools import budget_study

    monkeypatch.chdir(tmp_path)  # the tool moves into the recipe dir; this moves the test back afterwards
    with pytest.raises(SystemExit, match=r"exp/asr_nope/config.yaml does not exist: train the dense model first"):
        budget_study.main(["--recipe_dir", str(tmp_path), "--dense_tag", "nope", "--out", str(tmp_path / "b")])


def test_budget_study_refuses_a_conversion_made_with_other_options(tmp_path):
    """Its decodes and fine-tuning were made from that conversion: reusing it quietly would mislabel them."""
    from espnet_lowrank.errors import InputError
    from espnet_lowrank.stages.marker import describe, record
    from espnet_lowrank.tools.budget_study import convert_once

    dense_config, dense_model = tmp_path / "config.yaml", tmp_path / "valid.acc.ave.pth"
    dense_config.write_text("encoder: conformer\n")
    dense_model.write_bytes(b"weights")
    converted = tmp_path / "budget" / "r0.70"
    record(converted / ".done", describe(["param_ratio=0.7", "multiple_of=8"], [str(dense_config), str(dense_model)]),
           finished=True)
    convert_once(converted, dense_config, dense_model, 0.7, 8)  # the same conversion: reused, nothing converted
    assert sorted(path.name for path in converted.iterdir()) == [".done"]
    with pytest.raises(InputError, match=r"r0.70 was made from other inputs: --multiple_of was '8', now '2'\. "
                                         r"Delete it, and the fine-tuning runs made from it"):
        convert_once(converted, dense_config, dense_model, 0.7, 2)
    dense_model.write_bytes(b"other weights")
    with pytest.raises(InputError, match=r"valid.acc.ave.pth changed"):
        convert_once(converted, dense_config, dense_model, 0.7, 8)


def test_a_saved_config_yaml_is_refused_as_a_training_config(tmp_path):
    """ESPnet appends the data options run.sh passes to those a saved config.yaml holds."""
    from espnet_lowrank.model_config import main

    config = tmp_path / "config.yaml"
    config.write_text((TINY_CONFIG).read_text() + "train_shape_file: [exp/stats/train/speech_shape]\n")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blank>\n<unk>\na\n<sos/eos>\n")
    with pytest.raises(SystemExit, match="sets train_shape_file, which run.sh passes itself"):
        main([str(config), "--token_list", str(tokens)])
