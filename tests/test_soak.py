"""The soak: run.sh from stage 1 to 14 on the tiny corpus, killed at random moments in every stage and
resumed each time, loses no epoch, trains none twice and leaves nothing behind; and the soak's own checks
catch what they are there to catch."""

import os
import random
import signal

import pytest

from espnet_lowrank.errors import InputError
from dev import soak
from espnet_lowrank.studies.recipe import Recipe
from tiny_recipe import SPEED_PERTURB, TINY, recipe_dir

#: the demo's plan in small: a dense warm-up epoch, then two low-rank epochs, and speed perturbation
OPTIONS = [*TINY, *SPEED_PERTURB, "--lowrank_warmup_epochs", "1", "--asr_args", "--max_epoch 3"]


def test_kills_aim_at_every_stage_in_order_and_the_rest_at_training():
    stages = list(soak.STAGES)
    plan = soak.plan_kills(random.Random(0), 13, stages, ["KILL", "TERM"], 2.0)
    aimed = [kill.stage for kill in plan]
    assert aimed == sorted(aimed, key=stages.index) and set(aimed) == set(stages)
    assert aimed.count(soak.TRAINING) == 4 and aimed.count(1) == 1
    assert all(kill.signal_name in ("KILL", "TERM") for kill in plan)
    assert all(0 <= kill.delay <= 2.0 * (soak.TRAINING_SPAN if kill.stage == soak.TRAINING else 1) for kill in plan)
    assert [(k.stage, k.delay) for k in plan] == [
        (k.stage, k.delay) for k in soak.plan_kills(random.Random(0), 13, stages, ["KILL", "TERM"], 2.0)]


class FinishesFirst:
    """A session whose run.sh finishes before any kill later than ``lands_within`` seconds."""

    def __init__(self, lands_within: float):
        self.lands_within, self.delays = lands_within, []

    def kill(self, kill, stages) -> bool:
        self.delays.append(kill.delay)
        return kill.delay <= self.lands_within

    def say(self, message: str) -> None:
        pass


def test_a_late_kill_is_tried_sooner_until_it_lands_or_none_can():
    session = FinishesFirst(lands_within=0.3)
    kill = soak.Kill("TERM", soak.TRAINING, 27.87)
    soak.land(session, kill, soak.STAGES, 9)  # a finished run: only scoring and packing left to hit
    assert session.delays == [27.87, 13.94, 6.97, 3.48, 1.74, 0.87, 0.43, 0.21] and kill.delay == 0.21
    with pytest.raises(InputError, match=r"kill 3 did not land even 0.05 s after stage 12's line"):
        soak.land(FinishesFirst(lands_within=0.0), soak.Kill("KILL", 12, 1.0), soak.STAGES, 3)


def test_a_finished_stage_counts_as_reached():
    # stage 11 has no run.sh line when its training is done, only its "already done" line
    for line, stage in [("[2026-12-05 15:14:51] run.sh: stage 12: decode test", 12),
                        ("stage 11: already done (exp/asr_x/.done; same options and inputs)", 11)]:
        match = soak.STAGE_LINE.search(line)
        assert int(match.group(1)) == stage
    assert soak.STAGE_LINE.search("stage 11: epoch 1/2  train loss 141") is None


def test_an_epoch_started_again_after_it_had_finished_is_reported(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("1/3epoch started\n")
    first = soak.Attempt({tmp_path: 0}, {tmp_path: 1})  # killed after epoch 1 had finished
    offset = log.stat().st_size
    log.write_text(log.read_text() + "1/3epoch started\n2/3epoch started\n")
    assert soak.epochs_trained_twice([first, soak.Attempt({tmp_path: offset}, {tmp_path: 3})]) == [
        f"{tmp_path}: epoch 1 (finished before)"]
    resumed = soak.Attempt({tmp_path: offset + len("1/3epoch started\n")}, {tmp_path: 3})
    assert soak.epochs_trained_twice([first, resumed]) == []


def test_partial_files_and_lock_files_are_reported(tmp_path):
    recipe = recipe_dir(tmp_path / "recipe")
    (recipe / "exp" / "asr_x").mkdir(parents=True)
    (recipe / "exp" / "asr_x" / ".checkpoint.pth.123.partial").write_text("")
    (recipe / "exp" / "asr_x" / ".lock").write_text("123 456\n")
    (recipe / "data").mkdir()
    (recipe / "data" / ".lock").write_text("")  # flock's file, not held: no problem
    assert sorted(soak.leftovers(Recipe(recipe))) == [
        f"left behind: {recipe}/exp/asr_x/.checkpoint.pth.123.partial", f"left behind: {recipe}/exp/asr_x/.lock"]


def test_data_and_dumps_each_hold_every_utterance_once(tmp_path):
    recipe = recipe_dir(tmp_path / "recipe")
    data, dump = recipe / "data" / "test", recipe / "dump" / "raw" / "org" / "test"
    for folder in (data, dump):
        folder.mkdir(parents=True)
        (folder / "wav.scp").write_text("a a.flac\nb b.flac\n")
        (folder / "text").write_text("a A\nb B\n")
    assert soak.data_problems(Recipe(recipe)) == []
    (dump / "text").write_text("a A\na A\n")  # a resumed writer that appended
    (data / "wav.scp").write_text("a a.flac\nb b.flac\nc c.flac\n")
    problems = soak.data_problems(Recipe(recipe))
    assert f"{dump}/text:2: a appears twice" in problems
    assert f"{data}/text does not hold the utterances of {data}/wav.scp" in problems
    assert f"{dump}/wav.scp does not hold the utterances of {data}/wav.scp" in problems


def test_a_missing_decode_results_or_pack_is_reported(tmp_path):
    recipe = recipe_dir(tmp_path / "recipe")
    (recipe / "exp" / "asr_x").mkdir(parents=True)
    problems = soak.result_problems(Recipe(recipe), recipe / "exp" / "asr_x")
    assert problems[0] == f"nothing decoded in {recipe}/exp/asr_x"
    assert any("RESULTS.md is missing" in p for p in problems) and any("asr_model.zip" in p for p in problems)


def soaked(tmp_path, seed: int, signals, kills: int, max_delay: float = 4.0) -> dict:
    base = Recipe(recipe_dir(tmp_path / "recipe"))
    result = soak.soak(base.scratch(tmp_path / f"seed{seed}"), OPTIONS, kills, seed, signals, max_delay,
                       tmp_path / f"soak{seed}.log")
    assert result["problems"] == [] and result["kills"] == kills, (tmp_path / f"soak{seed}.log").read_text()[-5000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["TERM", "INT"])  # a scheduler's stop; Ctrl-C in a terminal
def test_a_stop_signal_in_every_stage_is_resumed(tmp_path, signal_name):
    # one kill aimed at each stage, soon after it starts, so that each lands while that stage works
    result = soaked(tmp_path, seed=10, signals=[signal_name], kills=len(soak.STAGES), max_delay=1.0)
    landed = {stage for _, stage in result["landed"]}
    assert {1, 11, 12, 14} <= landed, result["landed"]  # data, training, decoding, packing


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_soak_survives_twelve_random_kills(tmp_path, seed):
    # a scheduler's signals; Ctrl-C has its own test above, in every stage
    result = soaked(tmp_path, seed=seed, signals=["KILL", "TERM"], kills=12)
    print(f"seed {seed}: kills landed in stages {result['landed']}")


def test_config_paths_are_taken_from_where_soak_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("")
    assert soak.absolute_paths(["--asr_config", "mine.yaml", "--asr_tag", "mine.yaml", "--init_param", "gone.pth"]) == [
        "--asr_config", str(tmp_path / "mine.yaml"), "--asr_tag", "mine.yaml", "--init_param", "gone.pth"]


def test_the_stop_wait_names_a_process_that_ignores_the_signal(tmp_path, monkeypatch):
    monkeypatch.setattr(soak, "STOP_SECONDS", 1)
    recipe = recipe_dir(tmp_path / "recipe")
    (recipe / "run.sh").unlink()
    (recipe / "run.sh").write_text("#!/usr/bin/env bash\ntrap '' TERM\necho 'run.sh: stage 1: x' >&2\nsleep 30\n")
    (recipe / "run.sh").chmod(0o755)
    run = soak.Run(Recipe(recipe), [], open(os.devnull, "w"))
    assert run.wait_for_stage(1, list(soak.STAGES))
    with pytest.raises(InputError, match="still running 1 s after SIGTERM"):
        run.stop("TERM")
    run.process.wait()
    assert run.process.returncode == -signal.SIGKILL
