"""bf16 autocast for a CPU training (``--cpu_bf16``): ``auto`` only where the CPU has native bf16, the
log says which precision, checkpoints stay fp32 and a run resumes across the setting."""

import contextlib
import subprocess
import sys

import pytest
import torch

from espnet_lowrank.cpu_precision import PRIMITIVE_CACHE, autocast_forward, decide, keep_primitives, native_bf16_flag
from espnet_lowrank.model_config import read_config
from tiny_data import train_command, write_tiny_data
from tiny_recipe import ROOT

ZEN5 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 vaes\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text):
        (tmp_path / "cpuinfo").write_text(text)
        return tmp_path / "cpuinfo"
    return write


def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, tmp_path):
    assert native_bf16_flag(cpuinfo(ZEN5)) == "avx512_bf16"
    assert native_bf16_flag(cpuinfo(SAPPHIRE_RAPIDS)) == "amx_bf16"
    assert native_bf16_flag(cpuinfo(AVX2_ONLY)) is None
    assert native_bf16_flag(tmp_path / "absent") is None


@pytest.mark.parametrize("setting, text, on_cpu, expected", [
    ("auto", ZEN5, True, True),
    ("auto", AVX2_ONLY, True, False),  # emulated bf16 is slower: auto stays fp32
    ("true", AVX2_ONLY, True, True),
    ("false", ZEN5, True, False),
    ("true", ZEN5, False, False),  # CUDA: ESPnet's use_amp decides
])
def test_auto_turns_bf16_on_only_where_it_is_native(cpuinfo, setting, text, on_cpu, expected):
    use, why = decide(setting, on_cpu, cpuinfo(text))
    assert use is expected and why


def test_the_forward_computes_in_bf16_and_the_weights_stay_fp32():
    model = torch.nn.Linear(8, 8)
    autocast_forward(model)
    assert model(torch.randn(2, 8)).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.nn.Linear(8, 8)(torch.randn(2, 8)).dtype == torch.float32  # others untouched


def _training_model(config):
    from espnet_lowrank.model_config import build_model

    model = build_model(config, vocab_size=6).train()
    autocast_forward(model)
    return model, contextlib.nullcontext()


def _bench_row(config):
    from espnet_lowrank.model_config import build_model
    from espnet_lowrank.tools import bench

    row = bench._Row(lambda: build_model(config, vocab_size=6), bench.ConfigResult(str(config), 0, amp="bf16"),
                     "cpu", {}, torch.amp.GradScaler("cpu", enabled=False))
    return row.model.train(), bench.autocast("cpu", "bf16")


@pytest.mark.parametrize("prepared", [_training_model, _bench_row], ids=["training", "bench"])
def test_the_features_stay_fp32_as_under_espnets_cuda_autocast(prepared):
    model, context = prepared(ROOT / "tests" / "conf" / "tiny_lowrank.yaml")
    seen = {}
    for name in ("frontend", "encoder"):
        getattr(model, name).register_forward_hook(lambda module, _, out, name=name: seen.update({name: out[0].dtype}))
    with context:
        model(torch.randn(2, 8000), torch.tensor([8000, 6000]), torch.randint(1, 4, (2, 5)), torch.tensor([5, 4]))
    assert seen == {"frontend": torch.float32, "encoder": torch.bfloat16}


def test_bf16_keeps_more_onednn_primitives_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert keep_primitives() == str(PRIMITIVE_CACHE) and PRIMITIVE_CACHE > 1024  # oneDNN's default
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "500")
    assert keep_primitives() == "500"


def test_a_bf16_fast_step_training_says_so_saves_fp32_and_resumes_in_fp32_stock(tmp_path):
    data = write_tiny_data(tmp_path / "data")
    exp = tmp_path / "exp"
    command = train_command(sys.executable, ROOT / "tests" / "conf" / "tiny_lowrank.yaml", data, exp)
    result = subprocess.run([*command, "--cpu_bf16", "true"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "asr_train: training in bf16 autocast: --cpu_bf16 true" in result.stderr
    assert "oneDNN keeps " in result.stderr
    assert "dropout layers draw their masks from torch.rand (--cpu_step fast)" in result.stderr  # the default
    assert read_config(exp / "config.yaml")["cpu_bf16"] == "true"
    state = torch.load(exp / "1epoch.pth")
    assert all(value.dtype == torch.float32 for value in state.values() if value.is_floating_point())
    # and resumes as stock ESPnet trains: fp32, native dropout, convolutions in their own layout
    result = subprocess.run([*command, "--cpu_bf16", "false", "--cpu_step", "stock", "--max_epoch", "2",
                             "--resume", "true"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "asr_train: training in fp32: --cpu_bf16 false" in result.stderr and (exp / "2epoch.pth").exists()
    assert "(--cpu_step" not in result.stderr


def test_a_bad_setting_is_refused_by_name(tmp_path):
    data = write_tiny_data(tmp_path / "data")
    command = train_command(sys.executable, ROOT / "tests" / "conf" / "tiny_lowrank.yaml", data, tmp_path / "exp")
    result = subprocess.run([*command, "--cpu_bf16", "yes"], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "argument --cpu_bf16: invalid choice: 'yes'" in result.stderr
