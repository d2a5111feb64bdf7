"""Every command the README and docs show works as written: each ```bash line is run, dry-run or at
least parsed by the program it calls, and each ```python block compiles.

- ``./run.sh ...`` (in the recipe the block's ``cd`` names, else egs2/embedded/asr1) runs with
  ``--print_launch_cmd true`` in a scratch copy of that recipe: every option is checked and stage 11's
  plan printed, with nothing trained; files the command expects an earlier step to have made (under
  ``exp/``) are stood in for;
- ``espnet-lowrank ...`` and ``python -m <a command's module>`` are parsed by the command's own parser,
  and every ``conf/...yaml`` they name exists;
- ``python -m espnet_lowrank.bin.asr_train ...`` is parsed by ESPnet's own parser; ``python -m
  espnet2.bin.asr_train ... --print_config`` runs, stock, in a fresh interpreter;
- ``./asr.sh ...`` (ESPnet's recipe script, which needs Kaldi's tools and is not here) is checked as far as
  it runs here: the options its training stage gives stock ``espnet2.bin.asr_train`` (``--asr_config``,
  ``--asr_args``, ``--pretrained_model``) are parsed by it, stock, in a fresh interpreter;
- ``python -m espnet_lowrank.checkpoints EXP`` runs on an empty experiment dir; ``python dev/<script>.py
  ...`` (development harness, run from a checkout) is parsed by the script's own parser (or run with
  ``--help``, for a script with its own ``main``);
- ``make TARGET`` is dry-run (``make -n``), shell scripts and file commands are syntax-checked (``bash -n``).

A command that none of these covers fails the test, naming it.
"""

import argparse
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from espnet_lowrank.cli import COMMANDS, build_parser
from espnet_lowrank.tools.command import parse
from tiny_recipe import ROOT, run

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DEMO_RECIPE = ROOT / "egs2" / "embedded" / "asr1"
FILE_COMMANDS = {"cd", "cp", "rm", "mkdir", "sed", "for", "done"}


def blocks(path: Path, language: str) -> Iterator[str]:
    yield from re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def shell_commands() -> List[Tuple[str, Path, str]]:
    """(where, working dir, command) of every command line of every bash block; a ``cd`` moves the
    working dir of the lines after it in its block."""
    found = []
    for doc in DOCS:
        for block in blocks(doc, "bash"):
            cwd = ROOT
            for line in block.replace("\\\n", " ").splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                words = shlex.split(line, comments=True)
                found.append((f"{doc.relative_to(ROOT)}: {line.strip()}", cwd, line))
                if words[0] == "cd":
                    cwd = (cwd / words[1]).resolve()
    return found


COMMAND_LINES = shell_commands()


def test_the_docs_show_commands():
    assert len(COMMAND_LINES) > 40  # the extraction works


def program(words: List[str]) -> List[str]:
    """The words, without the environment assignments before them, with a venv's path to its scripts
    dropped and ``python -m <command module>`` as ``espnet-lowrank <command>``."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
        words = words[1:]
    words = [re.sub(r"^(\.\./)*\.venv/bin/", "", words[0]), *words[1:]]
    if words[0] == "python" and len(words) > 1:  # dev/ run from a recipe dir, as ../../../dev/
        words[1] = re.sub(r"^(\.\./)+dev/", "dev/", words[1])
    if words[:2] == ["python", "-m"]:
        module = words[2]
        if module == "espnet_lowrank.cli":
            return ["espnet-lowrank", *words[3:]]
        names = [name for name, path in COMMANDS.items() if path == module]
        if names:
            return ["espnet-lowrank", names[0], *words[3:]]
    return words


def check_configs_exist(words: List[str], cwd: Path) -> None:
    for word in words:
        for config in re.findall(r"(?<![\w/])(?:\.\./)*(?:tests/)?conf/\S+?\.yaml", word):
            assert (cwd / config).is_file(), f"{config} does not exist (from {cwd})"


def stand_in(recipe: Path, path: str) -> None:
    """An ``exp/`` file the command expects an earlier step to have made: a training config is the
    demo's, anything else a few bytes."""
    target = recipe / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".yaml":
        shutil.copy(ROOT / "conf" / "train_asr_lrsms_demo.yaml", target)
    else:
        target.write_bytes(b"stand-in")


def dry_run(words: List[str], cwd: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    for name in ("conf", "local"):
        (recipe / name).symlink_to((cwd / name).resolve())
    (recipe / "run.sh").write_text(f'#!/usr/bin/env bash\nexec "{cwd / "run.sh"}" "$@"\n')
    (recipe / "run.sh").chmod(0o755)
    for word in words:
        if word.startswith("exp/") and not (recipe / word).exists():
            stand_in(recipe, word)
    result = run(recipe, *words[1:], "--print_launch_cmd", "true", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^cd .* && ", result.stdout, flags=re.M), result.stdout


def stock_asr_train_accepts(options: List[str], cwd: Path) -> None:
    """Stock ESPnet's ``asr_train`` (the plugin registered by its start-up hook alone) takes ``options``."""
    result = subprocess.run([sys.executable, "-m", "espnet2.bin.asr_train", *options, "--print_config"],
                            cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


#: how ESPnet's asr.sh stage 11 hands its options to espnet2.bin.asr_train
ASR_SH_TRAINING = {"--asr_config": "--config", "--pretrained_model": "--init_param"}


def asr_sh_training_options(words: List[str]) -> List[str]:
    """The ``asr_train`` options ESPnet's asr.sh gives its training stage for these asr.sh options."""
    assert len(words) % 2 == 1, f"asr.sh takes options in pairs: {words}"
    options = []
    for name, value in zip(words[1::2], words[2::2]):
        if name in ASR_SH_TRAINING:
            options += [ASR_SH_TRAINING[name], value]
        elif name == "--asr_args":
            options += shlex.split(value)
    return options


@pytest.mark.parametrize("where, cwd, line", COMMAND_LINES, ids=[where for where, _, _ in COMMAND_LINES])
def test_a_command_of_the_docs_works_as_written(where, cwd, line, tmp_path):
    words = program(shlex.split(line, comments=True))
    name = words[0]
    if name == "./run.sh":
        dry_run(words, cwd if (cwd / "run.sh").is_file() and cwd != ROOT else DEMO_RECIPE, tmp_path)
    elif name == "espnet-lowrank":
        check_configs_exist(words, cwd)
        args = parse(build_parser(), words[1:])
        assert args.command in COMMANDS
    elif words[:3] == ["python", "-m", "espnet_lowrank.bin.asr_train"]:
        from espnet_lowrank.model_config import asr_task

        check_configs_exist(words, cwd)
        options = [word for word in words[3:] if word not in ("--print_config", "--help")]
        asr_task().get_parser().parse_args(options)
    elif words[:3] == ["python", "-m", "espnet2.bin.asr_train"]:
        check_configs_exist(words, cwd)
        stock_asr_train_accepts([word for word in words[3:] if word != "--print_config"], cwd)
    elif name == "./asr.sh":
        check_configs_exist(words, ROOT)  # the configs a user copies into their recipe
        stock_asr_train_accepts(asr_sh_training_options(words), ROOT)
    elif words[0] == "python" and words[1].startswith("dev/"):
        script = importlib.import_module(f"dev.{Path(words[1]).stem}")
        check_configs_exist(words, cwd)
        if hasattr(script, "add_arguments"):  # a command's convention: parsed by its own parser
            parser = argparse.ArgumentParser()
            script.add_arguments(parser)
            parse(parser, words[2:])
        else:
            result = subprocess.run([sys.executable, *words[1:], "--help"], cwd=ROOT, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-2000:]
    elif words[:3] == ["python", "-m", "espnet_lowrank.checkpoints"]:
        (tmp_path / words[3]).mkdir(parents=True)
        result = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    elif words[:3] == ["python", "-m", "espnet_lowrank.bin.asr_inference"]:
        assert words[3:] == ["--help"] and (ROOT / "espnet_lowrank" / "bin" / "asr_inference.py").is_file()
    elif name == "make":
        assert subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True).returncode == 0
    elif name == "pip":
        assert words == ["pip", "install", "-e", "."]  # what `make venv` runs, as CI does
    elif name == "bash" or name.endswith(".sh"):
        script = ROOT / (words[1] if name == "bash" else name)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    elif name in FILE_COMMANDS:
        assert subprocess.run(["bash", "-n", "-c", line]).returncode == 0
    else:
        pytest.fail(f"no test runs this command of the docs: {where}")


@pytest.mark.parametrize("doc", [doc for doc in DOCS if "```python" in doc.read_text()],
                         ids=lambda doc: str(doc.relative_to(ROOT)))
def test_the_python_of_the_docs_compiles(doc):
    for block in blocks(doc, "python"):
        compile(block, str(doc), "exec")


def anchors(doc: Path) -> set:
    """The anchors GitHub gives a document's headings."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_the_links_of_the_docs_lead_somewhere(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{doc.name} links to {target}: no such heading"


def test_the_readme_fits_on_one_screen():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 40


def named_modules() -> List[Tuple[str, str]]:
    """Every ``python -m MODULE`` the docs, configs, recipes and scripts name, code spans and comments too."""
    files = [*DOCS, *(ROOT / "conf").rglob("*.yaml"), *(ROOT / "egs2").rglob("*.sh"), *(ROOT / "local").rglob("*"),
             ROOT / "run.sh", ROOT / "Makefile"]
    found = set()
    for path in files:
        if path.is_file():
            for module in re.findall(r"python3? -m ([A-Za-z_][\w.]*)", path.read_text(errors="replace")):
                found.add((str(path.relative_to(ROOT)), module))
    return sorted(found)


@pytest.mark.parametrize("where, module", named_modules(), ids=[f"{w}: {m}" for w, m in named_modules()])
def test_every_module_the_docs_and_configs_run_with_python_m_exists(where, module):
    import importlib.util

    assert importlib.util.find_spec(module) is not None, f"{where} names python -m {module}, which does not exist"
