"""Registration: the installed package's start-up hook (``espnet_lowrank.pth``) makes every process know our
classes with nothing imported, costs nothing heavy, never breaks an interpreter, and leaves dense ESPnet
exactly as stock; ``import espnet_lowrank`` does the same where the hook is off."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf"
HOOK_OFF = {"ESPNET_LOWRANK_AUTOLOAD": "0"}


def python(code: str, *args: str, env: dict = {}, flags=()) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter of the test's venv (the plugin installed in it), from a directory
    that holds no copy of the package."""
    return subprocess.run([sys.executable, *flags, "-c", code, *args], capture_output=True, text=True,
                          cwd="/", env={**os.environ, **env})


def last_line(result: subprocess.CompletedProcess) -> str:
    """The check's own line: espnet 202511 prints a notice on stdout first."""
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()[-1]


KNOWS_OURS = """
from espnet2.tasks.asr import ASRTask, decoder_choices, encoder_choices
assert encoder_choices.get_class("lowrank_conformer").__name__ == "LowRankConformerEncoder"
assert encoder_choices.get_class("lowrank_e_branchformer").__name__ == "LowRankEBranchformerEncoder"
assert decoder_choices.get_class("lowrank_transformer").__name__ == "LowRankTransformerDecoder"
args = ASRTask.get_parser().parse_args(["--encoder", "lowrank_conformer", "--decoder", "lowrank_transformer"])
print("ok")
"""


def test_a_fresh_interpreter_knows_our_classes_with_nothing_imported():
    assert last_line(python(KNOWS_OURS)) == "ok"


#: registering again wraps nothing twice
WRAPPED_ONCE = """
import inspect
for name in ("get_parser", "build_model", "main_worker"):
    inner = inspect.getclosurevars(getattr(ASRTask, name).__func__).nonlocals.values()
    assert not any(getattr(function, "espnet_lowrank", False) for function in inner), name
"""


@pytest.mark.parametrize("first", [
    "import espnet_lowrank\nimport sys\nassert 'espnet2.tasks.asr' not in sys.modules",
    "import espnet2.tasks.asr\nimport espnet_lowrank",
    "import espnet_lowrank\nimport espnet_lowrank.registration as r\nr.register_when_espnet_loads()\n"
    "from espnet2.bin.asr_inference import Speech2Text\nr.register()\nr.register_when_espnet_loads()",
], ids=["ours-first-and-cheap", "espnet-first", "again-and-again"])
def test_with_the_hook_off_our_import_registers_whichever_comes_first(first):
    assert last_line(python(first + KNOWS_OURS + WRAPPED_ONCE, env=HOOK_OFF)) == "ok"


def test_with_the_hook_off_stock_espnet_refuses_our_names():
    """The checks above can fail: without the hook or our import, ESPnet does not know the names."""
    result = python("from espnet2.tasks.asr import ASRTask\n"
                    "ASRTask.get_parser().parse_args(['--encoder', 'lowrank_conformer'])", env=HOOK_OFF)
    assert result.returncode != 0 and "invalid choice: 'lowrank_conformer'" in result.stderr


HEAVY = "import sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'espnet2', 'espnet', 'numpy', 'yaml')), sorted(m for m in sys.modules if m.startswith('espnet_lowrank')))"


def test_the_hook_imports_nothing_heavy_at_start_up():
    assert last_line(python(HEAVY)) == "[] ['espnet_lowrank', 'espnet_lowrank.registration']"
    assert last_line(python(HEAVY, env=HOOK_OFF)) == "[] []"


def test_the_hook_is_installed_beside_the_package():
    """In the site directory that holds our distribution (an editable one here), where site.py reads it."""
    hook = Path(sysconfig.get_paths()["purelib"]) / "espnet_lowrank.pth"
    assert hook.read_text() == (ROOT / "espnet_lowrank.pth").read_text()


def _site_with(tmp_path, package_init: str) -> Path:
    """A site directory holding our hook and a package of our name whose ``__init__`` is ``package_init``."""
    site = tmp_path / "site"
    (site / "espnet_lowrank").mkdir(parents=True)
    (site / "espnet_lowrank" / "__init__.py").write_text(package_init)
    (site / "espnet_lowrank.pth").write_text((ROOT / "espnet_lowrank.pth").read_text())
    return site


#: ESPnet as stock: a dense config parses, our names are refused
STOCK = f"""
from espnet2.tasks.asr import ASRTask
ASRTask.get_parser().parse_args(['--config', {str(TINY / "tiny_dense.yaml")!r}])
try:
    ASRTask.get_parser().parse_args(['--encoder', 'lowrank_conformer'])
except SystemExit:
    print("stock")
"""


def _one_line_of_ours(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    ours = [line for line in result.stderr.splitlines() if "espnet-lowrank" in line]
    assert len(ours) == 1, result.stderr[-2000:]
    return ours[0]


@pytest.mark.parametrize("package_init, named", [
    ("raise RuntimeError('broken on purpose')", "RuntimeError('broken on purpose')"),
    ("import a_module_that_is_not_there", "No module named 'a_module_that_is_not_there'"),
])
def test_a_hook_that_fails_prints_one_line_and_leaves_python_and_espnet_stock(tmp_path, package_init, named):
    """Started without site.py (-S), then ESPnet's site directory put on the path without our .pth files
    (so without our real package), then ``site`` processes a directory holding our hook, a broken
    package of our name and the venv's other hooks, as it processes site-packages."""
    import espnet2

    site = tmp_path / "site"
    (site / "espnet_lowrank").mkdir(parents=True)
    (site / "espnet_lowrank" / "__init__.py").write_text(package_init)
    (site / "espnet_lowrank.pth").write_text((ROOT / "espnet_lowrank.pth").read_text())
    espnet_site = Path(espnet2.__file__).parents[1]
    for other in espnet_site.glob("*.pth"):  # the venv's other hooks (setuptools' distutils shim)
        if not other.name.startswith(("espnet_lowrank", "__editable__.espnet_lowrank")):
            (site / other.name).write_text(other.read_text())
    code = f"import sys\nsys.path.append({str(espnet_site)!r})\nimport site\nsite.addsitedir({str(site)!r})\n" + STOCK
    result = python(code, flags=["-S"])
    assert last_line(result) == "stock"
    line = _one_line_of_ours(result)
    assert named in line and line.endswith("ESPnet runs without the low-rank classes")


def test_a_registration_that_fails_prints_one_line_and_leaves_espnet_stock():
    broken = ("import espnet_lowrank.registration as r\n"
              "def broken(): raise ImportError('an ESPnet this plugin does not know')\n"
              "r.register = broken\n")
    result = python(broken + STOCK, env=HOOK_OFF)
    assert last_line(result) == "stock"
    assert _one_line_of_ours(result) == ("espnet-lowrank: could not register with ESPnet (ImportError: an ESPnet "
                                         "this plugin does not know); ESPnet runs without the low-rank classes")


PRINT_CONFIG = ["-m", "espnet2.bin.asr_train", "--print_config", "--config"]


@pytest.mark.parametrize("config", [TINY / "tiny_dense.yaml", ROOT / "conf/compare/train_asr_e_branchformer_demo.yaml"],
                         ids=["conformer", "e_branchformer"])
def test_a_dense_configs_print_config_is_byte_identical_to_stock_espnets(config):
    command = [sys.executable, *PRINT_CONFIG, str(config)]
    hooked = subprocess.run(command, capture_output=True, text=True, cwd="/")
    stock = subprocess.run(command, capture_output=True, text=True, cwd="/", env={**os.environ, **HOOK_OFF})
    assert hooked.returncode == stock.returncode == 0, hooked.stderr[-2000:]
    assert hooked.stdout == stock.stdout and "lowrank" not in hooked.stdout


def test_a_low_rank_configs_print_config_has_our_options():
    result = subprocess.run([sys.executable, *PRINT_CONFIG, str(TINY / "tiny_lowrank.yaml")],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("encoder: lowrank_conformer", "compile: false", "lowrank_recompute: false",
                 "stop_after_nonfinite_steps: 20"):
        assert f"\n{line}\n" in result.stdout, line


def test_our_options_on_a_dense_run_are_refused_as_stock_espnet_refuses_them():
    result = subprocess.run([sys.executable, "-m", "espnet2.bin.asr_train", "--config", str(TINY / "tiny_dense.yaml"),
                             "--print_config", "--compile", "true"], capture_output=True, text=True, cwd="/")
    assert result.returncode != 0 and "unrecognized arguments: --compile true" in result.stderr


PARTIAL_LOAD = """
import sys
from espnet2.tasks.asr import ASRTask
parser = ASRTask.get_parser()
args = parser.parse_args(["--config", sys.argv[1], "--token_list", "[" + ",".join(f"'t{i}'" for i in range(20)) + "]"])
args.token_list = [f"t{i}" for i in range(20)]
model = ASRTask.build_model(args)
state = model.state_dict()
del state["ctc.ctc_lo.bias"]
try:
    model.load_state_dict(state, strict=False)
    print("loaded")
except RuntimeError as error:
    print("refused:", str(error).splitlines()[-1].strip())
"""


def test_stock_espnet_loads_a_partial_dense_checkpoint_as_stock_and_refuses_it_for_ours():
    assert last_line(python(PARTIAL_LOAD, str(TINY / "tiny_dense.yaml"))) == "loaded"
    refused = last_line(python(PARTIAL_LOAD, str(TINY / "tiny_lowrank.yaml")))
    assert refused == ("refused: the checkpoint does not fit the ESPnetASRModel its config builds (a low-rank "
                       "checkpoint with a dense config, or the other way round, or another config's?): missing "
                       "keys [ctc.ctc_lo.bias]; unexpected keys []")
