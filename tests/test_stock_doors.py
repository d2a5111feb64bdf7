"""ESPnet's own doors, with the plugin installed and nothing of ours imported: stock ``asr_train`` trains an
LR-SMS config, stock ``asr_inference`` decodes it, stock ``pack`` packs it, ``Speech2Text`` and
``espnet.load`` load the pack; a dense training writes the config stock ESPnet writes."""

import sys
from pathlib import Path

import espnet
import pytest
import torch
import yaml

from stock_espnet import decode_pack, run_stock
from tiny_data import train_command, write_tiny_data

CONF = Path(__file__).resolve().parent / "conf"
STOCK_TRAINER = "espnet2.bin.asr_train"
HOOK_OFF = {"ESPNET_LOWRANK_AUTOLOAD": "0"}


def stock_training(root: Path, config: Path, *options: str, env: dict = {}):
    data = write_tiny_data(root / "data")
    command = train_command(sys.executable, config, data, root / "exp", module=STOCK_TRAINER) + list(options)
    return data, run_stock(command, root, env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stock")
    data, result = stock_training(root, CONF / "tiny_lowrank.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "data": data, "exp": root / "exp", "log": result.stderr}


def test_stock_asr_train_trains_our_classes_with_our_options(trained):
    assert "espnet2/bin/asr_train.py" in trained["log"]  # ESPnet's own main, not ours
    assert "asr_train: 1 torch thread" not in trained["log"] and "torch thread(s)" not in trained["log"]
    config = yaml.safe_load((trained["exp"] / "config.yaml").read_text())
    assert config["encoder"] == "lowrank_conformer" and config["decoder"] == "lowrank_transformer"
    assert (config["compile"], config["lowrank_recompute"], config["stop_after_nonfinite_steps"]) == (False, False, 20)
    state = torch.load(trained["exp"] / "1epoch.pth", map_location="cpu")
    assert "encoder.encoders.0.self_attn.linear_q.U" in state


def test_stock_asr_inference_decodes_every_utterance(trained, tmp_path):
    exp = trained["exp"]
    result = run_stock([
        sys.executable, "-m", "espnet2.bin.asr_inference", "--asr_train_config", str(exp / "config.yaml"),
        "--asr_model_file", str(exp / "1epoch.pth"), "--output_dir", str(tmp_path),
        "--data_path_and_name_and_type", f"{trained['data']['dir']}/wav.scp,speech,sound",
        "--ngpu", "0", "--batch_size", "1", "--beam_size", "2", "--nbest", "1",
    ], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    decoded = (tmp_path / "1best_recog" / "text").read_text().splitlines()
    assert sorted(line.split(" ")[0] for line in decoded) == [f"utt{i:02d}" for i in range(6)]


def test_stock_pack_packs_it_and_stock_loaders_decode_the_pack(trained, tmp_path):
    exp = trained["exp"]
    pack = tmp_path / "asr_model.zip"
    result = run_stock([sys.executable, "-m", "espnet2.bin.pack", "asr", "--asr_train_config",
                        str(exp / "config.yaml"), "--asr_model_file", str(exp / "1epoch.pth"),
                        "--outpath", str(pack)], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    texts = decode_pack(pack, trained["data"]["wav"], tmp_path)
    assert texts.pop("plugin_imported_by_the_hook") is True
    assert set(texts) == ({"from_pretrained", "espnet.load"} if hasattr(espnet, "load") else {"from_pretrained"})
    assert len(set(texts.values())) == 1  # the same model, the same text


def test_with_the_hook_off_stock_asr_train_refuses_our_config(tmp_path):
    """The tests above can fail: without the hook, stock ESPnet does not know our classes."""
    _, result = stock_training(tmp_path, CONF / "tiny_lowrank.yaml", env=HOOK_OFF)
    assert result.returncode != 0
    assert "--encoder must be one of" in result.stderr and result.stderr.strip().endswith("lowrank_conformer")


def test_a_diverged_stock_training_of_ours_stops_in_one_line(tmp_path):
    _, result = stock_training(tmp_path, CONF / "tiny_lowrank.yaml", "--max_epoch", "4", "--batch_size", "1",
                               "--optim_conf", "lr=10000000000.0", "--stop_after_nonfinite_steps", "4")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: training diverged: the loss was not finite for 4 steps in a row"), last


def test_a_dense_stock_training_writes_the_config_stock_espnet_writes(tmp_path):
    configs = []
    for name, env in (("hooked", {}), ("stock", HOOK_OFF)):
        _, result = stock_training(tmp_path / name, CONF / "tiny_dense.yaml", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        text = (tmp_path / name / "exp" / "config.yaml").read_text()
        configs.append(text.replace(str(tmp_path / name), "<root>"))
    assert configs[0] == configs[1] and "lowrank" not in configs[0] and "\ncompile:" not in configs[0]


def test_the_dense_warm_up_through_stock_doors_as_usage_md_shows_it_for_asr_sh(tmp_path):
    """Stock training of the dense twin, ``espnet-lowrank convert``, stock training of the low-rank config
    from the factorised weights (``--init_param``, which asr.sh's ``--pretrained_model`` gives)."""
    data, dense = stock_training(tmp_path / "warmup", CONF / "tiny_dense.yaml")
    assert dense.returncode == 0, dense.stderr[-3000:]
    warmup = tmp_path / "warmup" / "exp"
    converted = run_stock([sys.executable, "-m", "espnet_lowrank.cli", "convert", "--dense_config",
                           str(warmup / "config.yaml"), "--dense_model", str(warmup / "1epoch.pth"),
                           "--config", str(CONF / "tiny_lowrank.yaml"), "--out", str(warmup / "lowrank_init.pth")],
                          tmp_path)
    assert converted.returncode == 0, converted.stderr[-3000:]
    _, low_rank = stock_training(tmp_path / "lrsms", CONF / "tiny_lowrank.yaml",
                                 "--init_param", str(warmup / "lowrank_init.pth"))
    assert low_rank.returncode == 0, low_rank.stderr[-3000:]
    assert f"Loading pretrained params from {warmup / 'lowrank_init.pth'}" in low_rank.stderr
    assert "encoder.encoders.0.self_attn.linear_q.U" in torch.load(tmp_path / "lrsms" / "exp" / "1epoch.pth")
