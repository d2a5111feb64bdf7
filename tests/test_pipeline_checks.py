"""What stops bad input and stale work before it costs anything: stage markers
that know their inputs, option checks, locks, stage 3's audio checks, one-line
errors, and the console's view of training and decoding."""

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_lowrank.errors import InputError
from espnet_lowrank.stages import StageError, marker
from espnet_lowrank.stages.dump import filter_dir, format_dir
from tests.test_run_sh import ROOT, recipe_dir, run

# --- markers ---------------------------------------------------------------------------------------


def test_a_marker_skips_only_what_was_made_from_the_same_options_and_inputs(tmp_path, capsys):
    data = tmp_path / "text"
    data.write_text("a b\n")
    done = tmp_path / "out" / ".done"
    state = marker.describe(["nbpe=40"], [str(data)])
    assert marker.check(done, "5", "redo", "", state) == marker.RUN  # never ran
    marker.record(done, state, finished=True)
    assert marker.check(done, "5", "redo", "", marker.describe(["nbpe=40"], [str(data)])) == marker.SKIP
    assert "already done" in capsys.readouterr().err
    data.write_text("a c\n")
    assert marker.check(done, "5", "redo", "", marker.describe(["nbpe=30"], [str(data)])) == marker.RUN
    said = capsys.readouterr().err
    assert "--nbpe was '40', now '30'" in said and f"{data} changed" in said
    assert not done.exists()  # redone from scratch


def test_changed_training_inputs_stop_with_what_changed_and_how_to_redo(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_epoch: 3\n")
    done = tmp_path / "exp" / ".done"
    marker.record(done, marker.describe(["asr_args="], [str(config)]), finished=False)
    assert (tmp_path / "exp" / ".started").exists() and not done.exists()
    same = marker.describe(["asr_args="], [str(config)])
    assert marker.check(done, "11", "stop", "Use another --asr_tag.", same) == marker.RUN  # resume
    config.write_text("max_epoch: 4\n")
    with pytest.raises(StageError, match=rf"stage 11: .*exp was made from other inputs: {config} changed\. "
                                         r"Use another --asr_tag\."):
        marker.check(done, "11", "stop", "Use another --asr_tag.", marker.describe(["asr_args="], [str(config)]))


def test_a_directory_input_names_the_file_that_changed(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("wav.scp", "text"):
        (tmp_path / "d" / name).write_text("x\n")
    (tmp_path / "d" / ".done").write_text("{}")  # markers inside are not inputs
    before = marker.describe([], [str(tmp_path / "d")])
    (tmp_path / "d" / ".done").write_text("{\"other\": 1}")
    assert marker.changes(before, marker.describe([], [str(tmp_path / "d")])) == []
    (tmp_path / "d" / "text").write_text("y\n")
    assert marker.changes(before, marker.describe([], [str(tmp_path / "d")])) == [f"{tmp_path / 'd'} changed (text)"]


def test_audio_rewritten_in_place_under_its_name_is_a_changed_input(tmp_path):
    data = data_dir(tmp_path / "data", {"u1": tmp_path / "a.wav"})
    soundfile.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    before = marker.describe([], [str(data)])
    assert marker.changes(before, marker.describe([], [str(data)])) == []
    soundfile.write(tmp_path / "a.wav", np.ones(3200, dtype=np.float32) / 2, 16000)  # same name, new audio
    assert marker.changes(before, marker.describe([], [str(data)])) == [f"{data} changed ({marker.AUDIO})"]


def test_a_marker_from_before_audio_was_fingerprinted_still_matches(tmp_path):
    """Existing recipe dirs: their markers know no audio fingerprint, which must not read as a change (a
    training would refuse to resume)."""
    data = data_dir(tmp_path / "data", {"u1": tmp_path / "a.wav"})
    soundfile.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    old = marker.describe([], [str(data)])
    del old["inputs"][str(data)][marker.AUDIO]
    assert marker.changes(old, marker.describe([], [str(data)])) == []


def test_an_empty_marker_of_an_older_version_is_not_trusted(tmp_path):
    done = tmp_path / ".done"
    done.touch()
    with pytest.raises(StageError, match="older espnet-lowrank that did not record its inputs"):
        marker.check(done, "11", "stop", "", marker.describe([], []))


# --- options and locks (no training needed) --------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (("--stage", "abc"), "--stage must be a whole number >= 0, not 'abc'"),
    (("--nj", "0"), "--nj must be a whole number >= 1, not '0'"),
    (("--token_type", "phn"), "--token_type 'phn' is unknown; choose one of: char bpe"),
    (("--stage", "5", "--stop_stage", "3"), "--stage 5 comes after --stop_stage 3: nothing to run"),
    (("--max_wav_duration", "20s"), "--max_wav_duration must be a number of seconds, not '20s'"),
    (("--python", "/nonexistent/python"), "--python /nonexistent/python does not run"),
])
def test_bad_options_stop_in_one_line_naming_option_and_value(tmp_path, options, message):
    result = run(recipe_dir(tmp_path), *options, check=False)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_more_gpus_than_torch_sees_are_refused_before_anything_starts(tmp_path):
    import torch

    wanted = torch.cuda.device_count() + 1
    result = run(recipe_dir(tmp_path), "--ngpu", str(wanted), check=False)
    assert result.returncode != 0
    assert f"--ngpu {wanted}: torch sees {wanted - 1} GPU(s)" in result.stderr
    assert not (tmp_path / "data").exists()


def fake_trainable_recipe(path: Path) -> Path:
    """Just enough for stage 11 to get past its input checks."""
    recipe = recipe_dir(path)
    (recipe / "dump" / "raw" / "train").mkdir(parents=True)
    (recipe / "exp" / "asr_stats_train_char").mkdir(parents=True)
    (recipe / "exp" / "asr_stats_train_char" / ".done").write_text("{}")
    return recipe


def test_a_second_run_on_one_experiment_stops_naming_the_first(tmp_path):
    recipe = fake_trainable_recipe(tmp_path)
    exp = recipe / "exp" / "asr_x"
    exp.mkdir()
    first = subprocess.Popen(["sleep", "60"])
    try:
        (exp / ".lock").write_text(f"{first.pid}\n")
        result = run(recipe, "--stage", "11", "--stop_stage", "11", "--asr_tag", "x", check=False)
        assert result.returncode != 0
        assert f"exp/asr_x is in use by another run (PID {first.pid})" in result.stderr
        assert (exp / ".lock").read_text().strip() == str(first.pid)  # the first run keeps its lock
    finally:
        first.kill()
        first.wait()


def test_the_lock_of_a_run_that_died_is_taken_over_and_released(tmp_path):
    recipe = fake_trainable_recipe(tmp_path)
    exp = recipe / "exp" / "asr_x"
    exp.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (exp / ".lock").write_text(f"{gone.pid}\n")
    result = run(recipe, "--stage", "11", "--stop_stage", "11", "--asr_tag", "x", check=False)
    assert f"taking over exp/asr_x/.lock from PID {gone.pid}, which is gone" in result.stderr
    assert not (exp / ".lock").exists()  # released when run.sh ended, here at the model check:
    assert result.stderr.strip().endswith("ERROR: token list data/token_list/train/char/tokens.txt does not exist")


def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    """A dead run's PID reused by a live process: the start time the lock records tells them apart."""
    from espnet_lowrank.stages.lock import exclusive, started

    recipe = fake_trainable_recipe(tmp_path)
    exp = recipe / "exp" / "asr_x"
    exp.mkdir()
    reused = os.getpid()  # alive, but started at another time than the lock says
    (exp / ".lock").write_text(f"{reused} {int(started(reused)) + 1}\n")
    result = run(recipe, "--stage", "11", "--stop_stage", "11", "--asr_tag", "x", check=False)
    assert f"taking over exp/asr_x/.lock from PID {reused}, which is gone" in result.stderr
    with exclusive(tmp_path / "held"):  # and a lock records its owner's start time
        assert (tmp_path / "held" / ".lock").read_text().split() == [str(os.getpid()), started(os.getpid())]


def test_a_second_run_preparing_the_same_data_stops_naming_the_first(tmp_path):
    recipe = recipe_dir(tmp_path)
    (recipe / "data").mkdir()
    holder = subprocess.Popen(["flock", str(recipe / "data" / ".lock"), "sleep", "60"], start_new_session=True)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:  # until it holds the lock
            probe = subprocess.run(["flock", "-n", str(recipe / "data" / ".lock"), "true"])
            if probe.returncode != 0:
                break
            time.sleep(0.05)
        (recipe / "data" / ".lock").write_text(f"{holder.pid}\n")
        result = run(recipe, "--corpus", "none", "--stop_stage", "1", check=False)
        assert result.returncode != 0
        assert f"data is being prepared by another run (PID {holder.pid}); wait for it to finish" in result.stderr
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and the sleep that inherited the lock
        holder.wait()
    result = run(recipe, "--corpus", "none", "--stop_stage", "1")  # the kernel freed it with its holder
    assert "stage 1: data (none)" in result.stderr


# --- stage 3 and 4: audio and transcripts ----------------------------------------------------------


def data_dir(root: Path, audio: dict) -> Path:
    """A Kaldi dir whose utterances' audio is given as {utt: path}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in audio.items()))
    (root / "text").write_text("".join(f"{u} words\n" for u in audio))
    return root


@pytest.mark.parametrize("kind, message", [
    ("stereo", "has 2 channels; the recipe trains on mono audio"),
    ("directory", "is a directory, not an audio file"),
    ("empty", "holds no audio (0 samples)"),
    ("8k", "is sampled at 8000 Hz, the recipe expects 16000 Hz"),
    ("garbage", "cannot read"),
])
def test_stage_3_names_the_utterance_and_file_it_cannot_use(tmp_path, kind, message):
    good = tmp_path / "good.wav"
    soundfile.write(good, np.zeros(1600, dtype=np.float32), 16000)
    bad = tmp_path / f"{kind}.wav"
    if kind == "stereo":
        soundfile.write(bad, np.zeros((1600, 2), dtype=np.float32), 16000)
    elif kind == "directory":
        bad.mkdir()
    elif kind == "empty":
        soundfile.write(bad, np.zeros(0, dtype=np.float32), 16000)
    elif kind == "8k":
        soundfile.write(bad, np.zeros(800, dtype=np.float32), 8000)
    else:
        bad.write_bytes(b"RIFF" + os.urandom(200))
    source = data_dir(tmp_path / "data", {"a1": good, "b2": bad})
    with pytest.raises(InputError, match=rf"stage 3: .*wav\.scp: utterance b2: .*{re.escape(message)}"):
        format_dir(source, tmp_path / "dump")
    assert not (tmp_path / "dump").exists()


def test_stage_4_lists_what_it_drops_and_why(tmp_path):
    audio = {}
    for utt, seconds in (("a1", 1.0), ("a2", 0.05), ("a3", 1.0)):
        audio[utt] = tmp_path / f"{utt}.wav"
        soundfile.write(audio[utt], np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    source = data_dir(tmp_path / "data", audio)
    (source / "text").write_text("a1 words\na2 words\na3  \n")
    format_dir(source, tmp_path / "org")
    assert filter_dir(tmp_path / "org", tmp_path / "kept", 0.1, 20, 600) == 1
    dropped = (tmp_path / "kept" / "dropped").read_text().splitlines()
    assert dropped == ["a2 0.05 s is outside 0.1-20 s", "a3 empty transcript"]


# --- one-line errors -------------------------------------------------------------------------------


def stage_3(tmp_path, **env):
    return subprocess.run(
        [sys.executable, "-m", "espnet_lowrank.stages.dump", "format", "--data_dir", str(tmp_path / "nope"),
         "--out_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=dict(os.environ, **env),
    )


def test_expected_errors_are_one_line_and_verbose_brings_the_traceback_back(tmp_path):
    quiet = stage_3(tmp_path)
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == [f"ERROR: stage 3: {tmp_path / 'nope' / 'wav.scp'} does not exist"]
    loud = stage_3(tmp_path, ESPNET_LOWRANK_VERBOSE="1")
    assert loud.returncode == 1 and "Traceback" in loud.stderr


# --- configs read as asr_train reads them ----------------------------------------------------------


def report(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "espnet_lowrank.cli", "report", str(config), "--vocab", "10"],
                          capture_output=True, text=True)


def test_report_refuses_a_misspelt_top_level_key_as_asr_train_does(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "tests" / "conf" / "tiny_lowrank.yaml").read_text().replace("encoder_conf:", "encoder_cnof:"))
    result = report(config)
    assert result.returncode == 1
    assert f"ERROR: config {config}: unknown option 'encoder_cnof' (did you mean 'encoder_conf'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_low_rank_group_names_the_valid_ones(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "tests" / "conf" / "tiny_lowrank.yaml").read_text()
                      .replace("lowrank_attention:", "lowrank_atention:", 1))
    result = report(config)
    assert result.returncode == 1
    assert ("encoder_conf.lowrank_atention is not an option of encoder 'lowrank_conformer'; lowrank_conformer's "
            "low-rank options are lowrank_attention, lowrank_feed_forward") in result.stderr


def test_a_rank_above_break_even_is_warned_about_with_layer_rank_and_limit(caplog):
    from espnet_lowrank.encoder import LowRankConformerEncoder

    from tests.conftest import TINY_ENCODER

    LowRankConformerEncoder(20, **TINY_ENCODER, lowrank_attention={"mapping": "constant", "ratio": 0.25})
    assert "break-even" not in caplog.text
    LowRankConformerEncoder(20, **TINY_ENCODER, lowrank_attention={"mapping": "constant", "ratio": 0.75})
    assert ("encoder_conf.lowrank_attention (block 0 self_attn.linear_q): rank 24 is at or above the "
            "break-even rank 16.0 of its 32x32 weight") in caplog.text


# --- the console's view ----------------------------------------------------------------------------

EPOCH_LINE = (
    "[host] 2026-11-27 12:30:01,000 (trainer:392) INFO: 3epoch results: [train] iter_time=0.101, "
    "loss_ctc=60.1, loss_att=30.2, acc=0.612, loss=39.17, backward_time=0.2, train_time=1.2, "
    "time=1 minute and 10.36 seconds, total_count=468, [valid] loss_ctc=40.1, cer_ctc=0.2345, "
    "loss_att=20.0, acc=0.8123, cer=0.1, wer=0.3, loss=26.0, time=3.5 seconds, total_count=40, "
    "[att_plot] time=0.5 seconds, total_count=0"
)


def test_epoch_lines_of_espnets_log_become_one_console_line_each(tmp_path):
    from espnet_lowrank.stages.progress import follow

    log = tmp_path / "train.log"
    log.write_text("an earlier run's line: 9epoch results: [train] loss=1.0\n")
    out = io.StringIO()
    follower = threading.Thread(target=follow, args=(log, 10), kwargs=dict(poll_seconds=0.05, out=out))
    follower.start()
    time.sleep(0.2)
    with log.open("a") as stream:
        stream.write("INFO: something else\n" + EPOCH_LINE + "\n")
        stream.flush()
        time.sleep(0.3)
        stream.write("INFO: The training was finished at 10 epochs\n")
    follower.join(timeout=10)
    assert not follower.is_alive()
    first, last = out.getvalue().splitlines()
    assert first.startswith("stage 11: epoch 3/10  train loss 39.2  valid acc 0.812  cer_ctc 0.234  ")
    assert "ETA" in first and "9epoch" not in out.getvalue()  # the older lines were not repeated
    assert last.startswith("stage 11: training finished")


@pytest.mark.parametrize("seconds, shown", [(0.0, 2), (3600.0, 0)])
def test_within_an_epoch_the_batches_done_show_at_most_once_a_minute(tmp_path, monkeypatch, seconds, shown):
    from espnet_lowrank.stages import progress

    monkeypatch.setattr(progress, "BATCH_LINE_SECONDS", seconds)
    log = tmp_path / "train.log"
    log.write_text("INFO: [train] Batch sampler: NumElementsBatchSampler(N-batch=156, batch_bins=500000)\n"
                   + "".join(f"INFO: 2epoch:train:{a}-{a + 49}batch: iter_time=0.004, loss_ctc=14.9, loss={loss}, "
                             "backward_time=0.3\n" for a, loss in ((1, 41.7), (51, 40.2)))
                   + "INFO: The training was finished at 10 epochs\n")
    out = io.StringIO()
    progress.follow(log, 10, poll_seconds=0.01, out=out, start=0)
    lines = [line for line in out.getvalue().splitlines() if "batches" in line]
    assert lines == ["stage 11: epoch 2/10  50/156 batches  loss 41.7",
                     "stage 11: epoch 2/10  100/156 batches  loss 40.2"][:shown]


def test_the_epoch_follower_reads_the_last_epoch_and_stops_when_training_ends(tmp_path):
    """A training that fails (or is stopped) writes no 'finished' line: the follower ends with it, after
    showing what it wrote last."""
    from espnet_lowrank.stages.progress import follow

    log = tmp_path / "train.log"
    log.write_text("")
    training = subprocess.Popen(["bash", "-c", f"sleep 0.3; echo '{EPOCH_LINE}' >> {log}"])
    out = io.StringIO()
    follower = threading.Thread(target=follow, args=(log, 10, lambda: training.poll() is None),
                                kwargs=dict(poll_seconds=0.05, out=out, start=0))
    follower.start()
    follower.join(timeout=10)
    assert not follower.is_alive() and out.getvalue().startswith("stage 11: epoch 3/10")
