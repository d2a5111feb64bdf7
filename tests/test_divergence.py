"""A training whose loss stays non-finite stops, in one line, naming where and the last good checkpoint
(ESPnet alone skips every such step and ends the run successfully)."""

import math
import subprocess
import sys

import pytest
import torch

from espnet_lowrank.divergence import DivergenceGuard, TrainingDiverged, last_good_checkpoint
from tiny_data import train_command, write_tiny_data
from tiny_recipe import ROOT


class _Loss(torch.nn.Module):
    def forward(self, value):
        return torch.tensor(value), {}, torch.tensor(1.0)


def test_the_guard_stops_only_after_limit_non_finite_losses_in_a_row(tmp_path):
    model = _Loss()
    guard = DivergenceGuard(tmp_path, limit=3)
    model.register_forward_hook(guard)
    guard.start_epoch(4)
    for value in (1.0, math.nan, math.inf, 2.0, math.nan, math.nan):  # a finite loss resets the count
        model(value)
    model.eval()
    model(math.nan)  # validation does not count
    model.train()
    with pytest.raises(TrainingDiverged, match=r"not finite for 3 steps in a row, up to epoch 4, step 7; "
                                               r"no finished epoch has finite weights yet"):
        model(math.nan)


def test_an_epoch_without_one_finite_step_stops_at_its_end_however_short(tmp_path):
    model = _Loss()
    guard = DivergenceGuard(tmp_path, limit=20)
    model.register_forward_hook(guard)
    guard.start_epoch(1)
    for value in (1.0, math.nan, math.nan):  # one finite step: the epoch trained
        model(value)
    model.eval()
    model(1.0)
    model.train()
    guard.start_epoch(2)
    for value in (math.nan, math.inf, math.nan):  # not one, and far fewer than 20 in a row
        model(value)
    model.eval()
    with pytest.raises(TrainingDiverged, match=r"no training step of epoch 2 had a finite loss; "
                                               r"no finished epoch has finite weights yet"):
        model(1.0)  # validation: the epoch's steps are over
    model, guard = _Loss(), DivergenceGuard(tmp_path, limit=20)
    model.register_forward_hook(guard)
    guard.start_epoch(3)  # a run without validation: the next epoch's start tells
    model(math.nan)
    with pytest.raises(TrainingDiverged, match="no training step of epoch 3 had a finite loss"):
        guard.start_epoch(4)


def test_the_last_good_checkpoint_is_the_newest_with_finite_weights(tmp_path):
    for epoch, value in ((2, 1.0), (9, 2.0), (10, math.nan)):
        torch.save({"w": torch.full((2,), value), "step": torch.tensor(epoch)}, tmp_path / f"{epoch}epoch.pth")
    (tmp_path / "valid.acc.best.pth").write_bytes(b"not an epoch")
    assert last_good_checkpoint(tmp_path) == tmp_path / "9epoch.pth"
    assert last_good_checkpoint(tmp_path / "empty") is None


def test_a_bad_limit_is_named(tmp_path):
    with pytest.raises(ValueError, match="--stop_after_nonfinite_steps 0: give 1 or more"):
        DivergenceGuard(tmp_path, limit=0)


def test_asr_train_with_a_learning_rate_far_too_high_stops_in_one_line(tmp_path):
    data = write_tiny_data(tmp_path / "data")
    command = train_command(sys.executable, ROOT / "tests" / "conf" / "tiny_lowrank.yaml", data, tmp_path / "exp")
    command += ["--max_epoch", "4", "--batch_size", "1", "--optim_conf", "lr=10000000000.0",
                "--stop_after_nonfinite_steps", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: training diverged: the loss was not finite for 4 steps in a row, up to epoch ")
    assert "Traceback" not in result.stderr


def test_a_short_run_whose_every_step_is_non_finite_fails_naming_the_last_finite_checkpoint(tmp_path):
    """4 epochs × 3 steps at an SGD learning rate of 1e12: 12 steps in all, never 20 in a row; ESPnet alone
    trains to the end and exits 0."""
    data = write_tiny_data(tmp_path / "data")
    command = train_command(sys.executable, ROOT / "tests" / "conf" / "tiny_lowrank.yaml", data, tmp_path / "exp")
    command += ["--max_epoch", "4", "--optim", "sgd", "--optim_conf", "lr=1000000000000.0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: training diverged: no training step of epoch "), last
    good = last_good_checkpoint(tmp_path / "exp")
    assert (f"the last checkpoint with finite weights is {good}" if good else "no finished epoch has finite") in last
    assert "Traceback" not in result.stderr
