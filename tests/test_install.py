"""A wheel (non-editable) install in a fresh venv: its start-up hook registers our classes for ESPnet's
stock doors, and ``pip uninstall`` takes the hook away with the package."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stock_espnet import decode_pack, run_stock
from tiny_data import train_command, write_tiny_data

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf"
OURS = ("espnet_lowrank.pth", "__editable__.espnet_lowrank")


def site_packages(python: Path) -> Path:
    result = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True)
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv with this project's wheel installed, borrowing torch, ESPnet and the rest from the test's
    own venv (its site-packages on the path, and its start-up files but ours). pip builds the wheel as it
    does for a user, in a build environment of its own (setuptools and wheel from PyPI or pip's cache)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "build", "*.egg-info", "exp", "dump", "data", "downloads"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(root / "dist"), str(source)], check=True, capture_output=True)
    python = root / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    ours, borrowed = site_packages(python), site_packages(Path(sys.executable))
    (ours / "borrowed.pth").write_text(f"{borrowed}\n")
    for hook in borrowed.glob("*.pth"):
        if not hook.name.startswith(OURS):
            shutil.copy(hook, ours / hook.name)
    (wheel,) = (root / "dist").glob("espnet_lowrank-*.whl")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True)
    return {"root": root, "python": python, "site": ours}


def test_the_wheel_installs_the_hook_and_the_package_outside_the_checkout(fresh_venv):
    assert (fresh_venv["site"] / "espnet_lowrank.pth").read_text() == (ROOT / "espnet_lowrank.pth").read_text()
    result = subprocess.run([str(fresh_venv["python"]), "-c", "import sys, espnet_lowrank; print(espnet_lowrank.__file__,"
                             " sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'espnet2')))"],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0].startswith(str(fresh_venv["site"])) and result.stdout.split()[1] == "[]"


def test_stock_doors_train_decode_and_load_from_a_wheel_install(fresh_venv, tmp_path):
    python = str(fresh_venv["python"])
    data = write_tiny_data(tmp_path / "data")
    exp = tmp_path / "exp"
    trained = run_stock(train_command(python, TINY / "tiny_lowrank.yaml", data, exp,
                                      module="espnet2.bin.asr_train"), tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    decoded = run_stock([python, "-m", "espnet2.bin.asr_inference", "--asr_train_config", str(exp / "config.yaml"),
                         "--asr_model_file", str(exp / "1epoch.pth"), "--output_dir", str(tmp_path / "decode"),
                         "--data_path_and_name_and_type", f"{data['dir']}/wav.scp,speech,sound", "--ngpu", "0",
                         "--beam_size", "2"], tmp_path)
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    assert len((tmp_path / "decode" / "1best_recog" / "text").read_text().splitlines()) == 6
    packed = run_stock([python, "-m", "espnet2.bin.pack", "asr", "--asr_train_config", str(exp / "config.yaml"),
                        "--asr_model_file", str(exp / "1epoch.pth"), "--outpath", str(tmp_path / "asr_model.zip")],
                       tmp_path)
    assert packed.returncode == 0, packed.stderr[-2000:]
    texts = decode_pack(tmp_path / "asr_model.zip", data["wav"], tmp_path, python=python)
    assert texts.pop("plugin_imported_by_the_hook") is True and len(set(texts.values())) == 1


def test_pip_uninstall_takes_the_hook_away(fresh_venv):
    """Last in this module: ESPnet in that venv is stock again."""
    python = str(fresh_venv["python"])
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "espnet-lowrank"], check=True, capture_output=True)
    assert not (fresh_venv["site"] / "espnet_lowrank.pth").exists()
    result = subprocess.run([python, "-m", "espnet2.bin.asr_train", "--print_config", "--encoder", "lowrank_conformer"],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode != 0 and "invalid choice: 'lowrank_conformer'" in result.stderr
    assert "espnet-lowrank" not in result.stderr  # no hook left behind to fail
