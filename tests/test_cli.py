"""``espnet-lowrank``: every command behind it, one convention, bad input in one line."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from espnet_lowrank.cli import COMMANDS, main

PACKAGE = Path(__file__).resolve().parents[1] / "espnet_lowrank"


def test_help_lists_every_command():
    result = subprocess.run([str(Path(sys.executable).parent / "espnet-lowrank"), "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    listed = re.findall(r"^    ([a-z][a-z-]*)\b", result.stdout, flags=re.M)
    assert listed == list(COMMANDS)
    modules = [f"espnet_lowrank.{p.parent.name}.{p.stem}" for folder in ("tools", "studies")
               for p in (PACKAGE / folder).glob("*.py") if p.stem != "__init__"]
    commands = sorted(name.rpartition(".")[2].replace("_", "-") for name in modules
                      if hasattr(importlib.import_module(name), "add_arguments"))
    assert sorted(COMMANDS) == commands  # no command module is left out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_one_convention_and_runs_alone_with_the_same_options(name, capsys):
    module = importlib.import_module(COMMANDS[name])
    assert callable(module.add_arguments) and callable(module.run) and callable(module.main)
    first_words = " ".join(module.__doc__.split()[:4])
    for call in (lambda: main([name, "--help"]), lambda: module.main(["--help"])):
        with pytest.raises(SystemExit) as exit_:
            call()
        assert exit_.value.code == 0
        assert first_words in " ".join(capsys.readouterr().out.split())


def test_run_sh_options_after_the_double_dash_go_only_to_the_studies(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "conf/x.yaml", "--", "--stage", "3"])
    assert exit_.value.code == 2 and "unrecognized arguments: -- --stage 3" in capsys.readouterr().err


def test_no_module_looks_for_files_above_the_package():
    """A study or tool that finds run.sh or conf/ through the package's parent dirs breaks once installed."""
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if re.search(r"__file__\)?\.resolve\(\)\.parents?", path.read_text())]
    assert offenders == []
