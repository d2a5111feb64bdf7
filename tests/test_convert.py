"""Dense twin configs and ``espnet-lowrank convert``: a trained dense model
factorised into the low-rank model of a config."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from espnet_lowrank.model_config import build_model, dense_twin, read_config
from espnet_lowrank.surgery import low_rank_layers
from espnet_lowrank.conversion import convert

CONF = Path(__file__).resolve().parent / "conf"
TOKENS = ["<blank>", "<unk>", *"abcdefghijklmnop", "<sos/eos>"]


def _saved_dense_run(tmp_path, config=CONF / "tiny_dense.yaml"):
    """A dense model's weights and a config.yaml as ESPnet saves one (with its token list)."""
    torch.manual_seed(1)
    model = build_model(config, token_list=TOKENS)
    saved = read_config(config)
    saved["token_list"] = TOKENS
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    torch.save(model.state_dict(), tmp_path / "dense.pth")
    return model


def _write_config(tmp_path, name, edit):
    values = read_config(CONF / "tiny_lowrank.yaml")
    edit(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def _full_rank(values):
    for part in ("encoder_conf", "decoder_conf"):
        for key in values[part]:
            if key.startswith("lowrank_") and isinstance(values[part][key], dict):
                values[part][key] = {"mapping": "constant", "ratio": 1.0}


def _batch():
    generator = torch.Generator().manual_seed(0)
    return {"speech": 0.1 * torch.randn(2, 8000, generator=generator), "speech_lengths": torch.tensor([8000, 6400]),
            "text": torch.randint(2, 18, (2, 5), generator=generator), "text_lengths": torch.tensor([5, 4])}


def test_dense_twin_is_the_configs_model_with_every_layer_dense():
    twin = dense_twin(read_config(CONF / "tiny_lowrank.yaml"))
    assert twin["encoder"] == "conformer" and twin["decoder"] == "transformer"
    assert not any(k.startswith("lowrank_") for part in ("encoder_conf", "decoder_conf") for k in twin[part])
    assert twin == read_config(CONF / "tiny_dense.yaml")  # written by hand as tiny_lowrank's twin


def test_conversion_is_exact_at_full_rank(tmp_path):
    dense = _saved_dense_run(tmp_path)
    config = _write_config(tmp_path, "full.yaml", _full_rank)
    convert(tmp_path / "config.yaml", tmp_path / "dense.pth", config, tmp_path / "lowrank.pth")
    lowrank = build_model(config, token_list=TOKENS)
    lowrank.load_state_dict(torch.load(tmp_path / "lowrank.pth"), strict=True)
    assert len(low_rank_layers(lowrank)) == 31
    dense.eval(), lowrank.eval()
    with torch.no_grad():
        torch.testing.assert_close(lowrank(**_batch())[0], dense(**_batch())[0], atol=1e-4, rtol=1e-5)


def test_conversion_keeps_the_best_rank_r_part_and_copies_the_rest(tmp_path):
    dense = _saved_dense_run(tmp_path)
    rows = convert(tmp_path / "config.yaml", tmp_path / "dense.pth", CONF / "tiny_lowrank.yaml", tmp_path / "lr.pth")
    state = torch.load(tmp_path / "lr.pth")
    weight = dense.state_dict()["encoder.encoders.0.self_attn.linear_q.weight"].double()
    left, singular, right = torch.linalg.svd(weight)
    rank = state["encoder.encoders.0.self_attn.linear_q.U"].shape[1]
    best = left[:, :rank] @ torch.diag(singular[:rank]) @ right[:rank]
    merged = state["encoder.encoders.0.self_attn.linear_q.U"] @ state["encoder.encoders.0.self_attn.linear_q.V"]
    torch.testing.assert_close(merged.double(), best, atol=1e-5, rtol=1e-5)
    assert torch.equal(state["encoder.encoders.0.self_attn.linear_pos.weight"],
                       dense.state_dict()["encoder.encoders.0.self_attn.linear_pos.weight"])
    q = next(r for r in rows if r["module"] == "encoder.encoders.0.self_attn.linear_q")
    assert q["energy"] == pytest.approx((singular[:rank].square().sum() / singular.square().sum()).item())


def test_a_guided_config_gets_its_guides_at_the_converted_factors(tmp_path):
    _saved_dense_run(tmp_path)
    config = _write_config(tmp_path, "guided.yaml", lambda v: v["encoder_conf"].update(lowrank_guide={"steps": 5}))
    convert(tmp_path / "config.yaml", tmp_path / "dense.pth", config, tmp_path / "lr.pth")
    state = torch.load(tmp_path / "lr.pth")
    prefix = "encoder.encoders.1.feed_forward.w_1."
    torch.testing.assert_close(state[prefix + "guide"], state[prefix + "U"] @ state[prefix + "V"])
    assert int(state["encoder.lowrank_guide.step"]) == 0


def test_a_checkpoint_that_is_not_the_dense_twin_is_refused(tmp_path):
    _saved_dense_run(tmp_path)
    lowrank = build_model(CONF / "tiny_lowrank.yaml", token_list=TOKENS)
    torch.save(lowrank.state_dict(), tmp_path / "not_dense.pth")
    with pytest.raises(ValueError, match=r"missing keys \[.*linear_q.weight.*unused keys \[.*linear_q.U"):
        convert(tmp_path / "config.yaml", tmp_path / "not_dense.pth", CONF / "tiny_lowrank.yaml", tmp_path / "x.pth")
    bigger = read_config(CONF / "tiny_dense.yaml")
    bigger["encoder_conf"]["linear_units"] = 96
    (tmp_path / "bigger.yaml").write_text(yaml.safe_dump(bigger))
    torch.save(build_model(tmp_path / "bigger.yaml", token_list=TOKENS).state_dict(), tmp_path / "bigger.pth")
    with pytest.raises(ValueError, match=r"other shapes \[.*feed_forward.w_1.weight \(96, 32\)"):
        convert(tmp_path / "config.yaml", tmp_path / "bigger.pth", CONF / "tiny_lowrank.yaml", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def test_convert_cli_prints_the_energy_kept(tmp_path):
    _saved_dense_run(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "espnet_lowrank.cli", "convert", "--dense_config", str(tmp_path / "config.yaml"),
         "--dense_model", str(tmp_path / "dense.pth"), "--config", str(CONF / "tiny_lowrank.yaml"),
         "--out", str(tmp_path / "lr.pth")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "31 factorised layers" in result.stdout and "encoder attention" in result.stdout
    assert (tmp_path / "lr.pth").exists()
