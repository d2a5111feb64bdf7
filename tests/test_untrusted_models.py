"""Model files a user hands a command are untrusted: a pickle that would run code is refused in one line
that does not advise loading it unsafely, for every command that reads a model, and a pack unpacks only
inside its target dir."""

import os
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tiny_recipe import ROOT

CONF = ROOT / "tests" / "conf"


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _with_tokens(config: Path, tmp_path: Path) -> Path:
    """``config`` as a run saves it, with its token list (the commands build the model first)."""
    values = yaml.safe_load(config.read_text())
    values["token_list"] = ["<blank>", "<unk>", *"abcdef", "<sos/eos>"]
    saved = tmp_path / f"saved_{config.name}"
    saved.write_text(yaml.safe_dump(values))
    return saved


@pytest.fixture
def crafted(tmp_path) -> dict:
    ran = tmp_path / "code_ran"
    model = tmp_path / "crafted.pth"
    torch.save({"encoder.weight": torch.zeros(2), "payload": _RunsCode(ran)}, model)
    return {"model": model, "ran": ran}


def _refused(main, argv, crafted) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    message = str(stopped.value.code)
    assert not crafted["ran"].exists()  # the payload did not run
    assert message.startswith("ERROR: ") and "\n" not in message
    assert "refused: it holds Python objects besides weights" in message and "posix.system" in message
    assert "weights_only" not in message  # no advice to load it unsafely
    return message


def test_convert_refuses_a_crafted_dense_model(crafted, tmp_path):
    from espnet_lowrank.tools.convert import main

    _refused(main, ["--dense_config", str(CONF / "tiny_dense.yaml"), "--dense_model", str(crafted["model"]),
                    "--config", str(CONF / "tiny_lowrank.yaml"), "--out", str(tmp_path / "out.pth")], crafted)
    assert not (tmp_path / "out.pth").exists()


def test_convert_by_budget_refuses_a_crafted_dense_model(crafted, tmp_path):
    from espnet_lowrank.tools.convert import main

    _refused(main, ["--dense_config", str(_with_tokens(CONF / "tiny_dense.yaml", tmp_path)), "--dense_model",
                    str(crafted["model"]), "--param_ratio", "0.5", "--out", str(tmp_path / "out.pth")], crafted)


def test_merge_refuses_a_crafted_model(crafted, tmp_path):
    from espnet_lowrank.tools.merge import main

    _refused(main, ["--config", str(_with_tokens(CONF / "tiny_lowrank.yaml", tmp_path)), "--model",
                    str(crafted["model"]), "--out_dir", str(tmp_path / "merged")], crafted)
    assert not (tmp_path / "merged" / "model.pth").exists()


def test_step_check_refuses_a_crafted_checkpoint(crafted, tmp_path):
    from dev.step_check import main
    from tiny_data import write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    _refused(main, [str(CONF / "tiny_lowrank.yaml"), "--data_dir", str(data["dir"]),
                    "--token_list", str(data["tokens"]), "--checkpoint", str(crafted["model"])], crafted)


def test_a_file_that_is_no_checkpoint_is_named(tmp_path):
    from espnet_lowrank.model_files import load_weights
    from espnet_lowrank.errors import InputError

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(InputError, match=f"{junk} is not a readable torch checkpoint \\(it does not unpickle\\)"):
        load_weights(junk)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(InputError, match="holds a list, not a state dict"):
        load_weights(tmp_path / "list.pth")


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/escaped_absolute.txt"])
def test_a_pack_whose_member_would_land_outside_is_refused(tmp_path, member):
    from espnet_lowrank.tools.convert import main

    pack = tmp_path / "asr_model.zip"
    with zipfile.ZipFile(pack, "w") as archive:
        archive.writestr("meta.yaml", "files: {asr_model_file: model.pth}\nyaml_files: {asr_train_config: c.yaml}\n")
        archive.writestr(member, "written outside")
    out = tmp_path / "deep" / "out.pth"
    with pytest.raises(SystemExit, match=f"refused: its member '{member}' would unpack outside the target dir"):
        main(["--dense_model", str(pack), "--param_ratio", "0.5", "--out", str(out)])
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not (out.parent / "dense_pack").exists() or not any((out.parent / "dense_pack").rglob("*.txt"))
