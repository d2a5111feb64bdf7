"""Checkpoints survive a crash: files appear whole or not at all, and a resume
that finds a damaged checkpoint goes back to the last good one, never to
epoch 1."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from espnet_lowrank.checkpoints import PREVIOUS, atomic_save, recover_checkpoint
from espnet_lowrank.errors import InputError
from tests.tiny_data import train_command, write_tiny_data

KILLED_MID_SAVE = """
import sys, time, torch
from espnet_lowrank.checkpoints import atomic_save

class Slow:
    def __reduce__(self):  # pickled in the middle of the file: the writer is killed here
        print("writing", flush=True)
        time.sleep(60)
        return (int, (0,))

atomic_save({"weights": torch.zeros(100_000), "slow": Slow()}, sys.argv[1])
"""


def test_a_kill_during_the_save_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "checkpoint.pth"
    atomic_save({"epoch": 1}, target)
    writer = subprocess.Popen([sys.executable, "-c", KILLED_MID_SAVE, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert torch.load(target) == {"epoch": 1}


def test_each_new_checkpoint_keeps_the_one_before(tmp_path):
    target = tmp_path / "checkpoint.pth"
    atomic_save({"epoch": 1}, target)
    atomic_save({"epoch": 2}, target)
    assert torch.load(target) == {"epoch": 2} and torch.load(tmp_path / PREVIOUS) == {"epoch": 1}
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pth", PREVIOUS}  # no partial files left


def test_no_checkpoint_over_finished_epochs_is_refused_not_restarted(tmp_path):
    torch.save({}, tmp_path / "1epoch.pth")
    with pytest.raises(InputError, match=r"has finished epochs \(1\) but no checkpoint that loads"):
        recover_checkpoint(tmp_path)
    recover_checkpoint(tmp_path / "new")  # a new run has nothing to recover


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs of the tiny model, trained by ESPnet through our entry point."""
    root = tmp_path_factory.mktemp("ckpt")
    data = write_tiny_data(root / "data")
    config = os.path.join(os.path.dirname(__file__), "conf", "tiny_lowrank.yaml")

    def train(epochs: int) -> subprocess.CompletedProcess:
        command = train_command(sys.executable, config, data, root / "exp")
        command[command.index("--max_epoch") + 1] = str(epochs)
        return subprocess.run([*command, "--resume", "true"], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))

    result = train(2)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "exp", train


def test_an_epoch_file_lost_to_a_kill_after_the_checkpoint_is_restored(trained):
    # ESPnet saves checkpoint.pth, then 2epoch.pth: a kill between them leaves the file out
    exp, train = trained
    (exp / "2epoch.pth").unlink()
    result = train(2)  # nothing left to train: only the model averaging, which reads every epoch file
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2epoch.pth was not written before the run stopped; restored from checkpoint.pth" in result.stderr
    weights = torch.load(exp / "checkpoint.pth", weights_only=False)["model"]
    restored = torch.load(exp / "2epoch.pth")
    assert restored.keys() == weights.keys() and all(torch.equal(restored[k], weights[k]) for k in weights)
    assert os.readlink(exp / "latest.pth") == "2epoch.pth"


def test_a_truncated_checkpoint_resumes_from_the_last_good_state(trained):
    exp, train = trained
    assert torch.load(exp / PREVIOUS, weights_only=False)["reporter"]["epoch"] == 1
    checkpoint = exp / "checkpoint.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    second_epoch = (exp / "2epoch.pth").stat().st_mtime_ns
    started = time.time_ns()
    result = train(3)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint.pth is damaged" in result.stderr and "resuming from the last good state" in result.stderr
    assert (exp / "checkpoint.pth.damaged").exists()
    # epoch 1 was not trained again; epoch 2 (after the last good state) and 3 were
    assert (exp / "2epoch.pth").stat().st_mtime_ns > max(second_epoch, started)
    assert torch.load(exp / "checkpoint.pth", weights_only=False)["reporter"]["epoch"] == 3
    assert "1epoch results" not in result.stderr
