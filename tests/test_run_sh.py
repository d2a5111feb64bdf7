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


def test_run_sh_edited_during_a_run_does_not_change_the_run(tmp_path):
    """An edit of run.sh while it runs, written in place (as editors and scripts do): bash would go on
    reading the new file from the old offset, mid-line."""
    recipe = recipe_dir(tmp_path / "recipe")
    script = tmp_path / "checkout" / "run.sh"
    script.parent.mkdir()
    shutil.copy(ROOT / "run.sh", script)
    (recipe / "run.sh").write_text(f'#!/usr/bin/env bash\nexec "{script}" "$@"\n')
    editing_python = tmp_path / "python"  # the first Python run.sh starts edits run.sh, in place
    editing_python.write_text(f"#!/usr/bin/env bash\n{{ head -1 {script}; echo '# a line the update added, "
                              f"shifting every later byte'; tail -n +2 {script}; }} > {script}.new\n"
                              f"cat {script}.new > {script}\nexec {sys.executable} \"$@\"\n")
    editing_python.chmod(0o755)
    result = subprocess.run(["./run.sh", "--python", str(editing_python), "--corpus", "none", "--stop_stage", "1"],
                            cwd=recipe, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished stages 1-1" in result.stderr
    assert "# a line the update added" in script.read_text()  # the edit did happen


def test_missing_config_is_named(tmp_path):
    result = run(recipe_dir(tmp_path), "--asr_config", "conf/nope.yaml", check=False)
    assert result.returncode != 0 and "--asr_config conf/nope.yaml does not exist" in result.stderr


@pytest.mark.slow
def test_pipeline_scores_and_packs(pipeline):
    exp = pipeline["exp"]
    results = (exp / "RESULTS.md").read_text()
    assert "### WER" in results and "### CER" in results
    rows = [line for line in results.splitlines() if line.startswith("|test|")]
    assert len(rows) == 2 and all(len(row.split("|")) == 11 for row in rows)
    assert "## decode_asr_cpu_valid.acc.ave\n- model: `valid.acc.ave.pth`" in results  # each named once
    assert float(rows[0].split("|")[8]) >= 0  # Err column is a number
    train = (pipeline["recipe"] / "data" / "train_sp" / "wav.scp").read_text()
    assert "sp0.9-" in train and "sp1.1-" in train
    assert (exp / "asr_model.zip").exists()
    # stage 1 prepares the embedded corpus's held-out eval set too (12 voices, 1 utterance each when tiny)
    assert len((pipeline["recipe"] / "data" / "eval" / "wav.scp").read_text().splitlines()) == 12


@pytest.mark.slow
def test_the_stage_14_pack_decodes_in_stock_espnet_with_nothing_of_ours_imported(pipeline, tmp_path):
    from stock_espnet import decode_pack

    wav = next((pipeline["recipe"] / "downloads").rglob("*.flac"))
    texts = decode_pack(pipeline["exp"] / "asr_model.zip", wav, tmp_path)
    assert texts.pop("plugin_imported_by_the_hook") is True
    assert texts and len(set(texts.values())) == 1  # from_pretrained and espnet.load: the same text


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

    from espnet_lowrank.studies.history import training_history

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
def test_a_budgeted_warmup_resumes_in_each_phase_hits_its_budget_and_decodes_and_merges(pipeline, tmp_path,
                                                                                         monkeypatch):
    """--lowrank_param_ratio: ranks from the warmed-up spectra, written as the run's explicit config."""
    from espnet_lowrank.model_config import build_model, count_parameters
    from espnet_lowrank.studies.history import training_history
    from espnet_lowrank.tools.merge import main as merge

    recipe = pipeline["recipe"]
    exp = recipe / "exp" / "asr_budget"
    warmup = exp / "dense_warmup"
    options = [*TINY, "--asr_tag", "budget", "--stage", "11", "--stop_stage", "13", *SPEED_PERTURB,
               "--lowrank_warmup_epochs", "2", "--lowrank_param_ratio", "0.5",
               "--asr_args", "--max_epoch 4 --batch_size 2 --batch_type unsorted"]
    kill_when_written(recipe, options, warmup / "1epoch.pth")  # in the dense phase
    dense_first = (warmup / "1epoch.pth").stat().st_mtime_ns
    kill_when_written(recipe, options, exp / "1epoch.pth")  # in the low-rank phase
    lowrank_first = (exp / "1epoch.pth").stat().st_mtime_ns
    run(recipe, *options)
    assert (warmup / "1epoch.pth").stat().st_mtime_ns == dense_first
    assert (exp / "1epoch.pth").stat().st_mtime_ns == lowrank_first
    assert training_history(exp)["epochs"] == [1, 2, 3, 4]
    assert "(asked: 0.500)" in (warmup / "convert.log").read_text()  # the ranks chosen, per group and block
    saved = yaml.safe_load((exp / "config.yaml").read_text())
    chosen = yaml.safe_load((warmup / "lowrank_config.yaml").read_text())
    for part in ("encoder_conf", "decoder_conf"):
        mappings = {key: value for key, value in saved[part].items() if key.startswith("lowrank_") and
                    isinstance(value, dict) and key != "lowrank_input_layer"}
        assert mappings and all(value["mapping"] == "explicit" for value in mappings.values())
        assert mappings == {key: chosen[part][key] for key in mappings}
    monkeypatch.chdir(recipe)  # the saved configs name the statistics relative to it
    dense_params = count_parameters(build_model(warmup / "config.yaml"))
    params = count_parameters(build_model(exp / "config.yaml"))
    assert abs(params / dense_params - 0.5) <= 0.01
    assert "|test|" in (exp / "RESULTS.md").read_text()  # decoded and scored
    merge(["--config", str(exp / "config.yaml"), "--model", str(exp / "valid.acc.ave.pth"),
           "--out_dir", str(tmp_path / "merged")])
    assert count_parameters(build_model(tmp_path / "merged" / "config.yaml")) == dense_params


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


@pytest.mark.slow
def test_compiled_memory_lean_training_on_two_cpu_processes(pipeline):
    """--compile and --lowrank_recompute under torchrun: each rank compiles its blocks, DDP syncs them."""
    recipe = pipeline["recipe"]
    exp = recipe / "exp" / "asr_ddp_compiled"
    run(recipe, *TINY, "--asr_tag", "ddp_compiled", "--stage", "11", "--stop_stage", "11", "--num_procs", "2",
        *SPEED_PERTURB, "--asr_args", "--max_epoch 1 --batch_size 4 --batch_type unsorted --num_iters_per_epoch 3",
        "--asr_args", "--compile true --lowrank_recompute true")  # few batches: each new shape compiles (minutes)
    log = (exp / "train.log").read_text()
    assert "torch.compile built" in log and "all 2 ranks hold identical weights" in log


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


def test_a_saved_config_yaml_is_refused_as_a_training_config(tmp_path):
    """ESPnet appends the data options run.sh passes to those a saved config.yaml holds."""
    from espnet_lowrank.model_config import check_training_config

    config = tmp_path / "config.yaml"
    config.write_text((TINY_CONFIG).read_text() + "train_shape_file: [exp/stats/train/speech_shape]\n")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blank>\n<unk>\na\n<sos/eos>\n")
    with pytest.raises(ValueError, match="sets train_shape_file, which run.sh passes itself"):
        check_training_config(config, tokens)
