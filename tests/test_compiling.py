"""Compiled training (--compile): the same losses as eager, bounded
recompilation, and checkpoints an uncompiled model loads strictly and resumes.
Compiling takes minutes on 2 CPU cores: these tests are slow."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from espnet_lowrank.compiling import compile_blocks, graphs_compiled
from espnet_lowrank.model_config import build_model
from tiny_data import train_command, write_tiny_data

CONF = Path(__file__).resolve().parent / "conf"


def _batch(seconds: float, utterances: int, generator) -> dict:
    samples = int(seconds * 16000)
    lengths = torch.linspace(samples, 0.7 * samples, utterances).long()
    return {"speech": 0.1 * torch.randn(utterances, samples, generator=generator), "speech_lengths": lengths,
            "text": torch.randint(1, 19, (utterances, 6), generator=generator),
            "text_lengths": torch.linspace(6, 3, utterances).long()}


def _losses(compiled: bool) -> list:
    torch.manual_seed(0)
    model = build_model(CONF / "tiny_lowrank.yaml", vocab_size=20)
    if compiled:
        compile_blocks(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for seconds, utterances in ((1.0, 3), (0.7, 2), (1.3, 3), (0.9, 3)):  # lengths vary as in training
        loss = model(**_batch(seconds, utterances, generator))[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_compiled_training_gives_eager_losses_with_bounded_recompiles(monkeypatch):
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # eager's dropout masks
    eager = _losses(compiled=False)
    before = graphs_compiled()
    compiled = _losses(compiled=True)
    # both blocks of a kind share graphs although their ranks differ; a new length recompiles at most
    # once (the first graph is static, the second dynamic): encoder, decoder, batch of 2, ...
    assert graphs_compiled() - before <= 8
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_a_model_without_blocks_is_refused_by_name():
    with pytest.raises(ValueError, match="encoder.encoders, decoder.decoders"):
        compile_blocks(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_a_compiled_memory_lean_run_resumes_uncompiled(tmp_path):
    data = write_tiny_data(tmp_path / "data")
    exp = tmp_path / "exp"
    command = train_command(sys.executable, CONF / "tiny_lowrank.yaml", data, exp)
    first = subprocess.run(command + ["--compile", "true", "--lowrank_recompute", "true"],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "factorised layers recompute V·x" in first.stderr
    # an epoch of batches of varying lengths (and a last one of a single utterance) stays within a few graphs
    graphs = re.search(r"torch.compile built (\d+) graphs", first.stderr)
    assert graphs and int(graphs.group(1)) <= 12, first.stderr[-3000:]
    config = yaml.safe_load((exp / "config.yaml").read_text())
    assert config["compile"] is True and config["lowrank_recompute"] is True
    # the keys are the uncompiled model's: it loads strictly
    model = build_model(exp / "config.yaml")
    model.load_state_dict(torch.load(exp / "1epoch.pth", map_location="cpu"), strict=True)
    second = subprocess.run(command + ["--compile", "false", "--resume", "true", "--max_epoch", "2"],
                            capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "torch.compile built" not in second.stderr and (exp / "2epoch.pth").exists()
    assert "1epoch results" not in second.stderr and "2epoch results" in second.stderr  # epoch 1 not redone
