"""The house's layers (docs/architecture.md): imports run one way, from the commands down to the library.

library (what a user imports into their own ESPnet code) <- recipe (stages, data, the console commands)
<- studies (drivers that run the recipe many times) <- ``cli`` (the one command that lists them all).
Development harness lives outside the package (``dev/``) and nothing installed imports it. Every import
counts, those inside functions too, and no modules import each other in a circle.
"""

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "espnet_lowrank"
#: each layer, by the first part of a module's path inside the package (the library: every other)
LAYERS = {"stages": "recipe", "data": "recipe", "tools": "recipe", "studies": "studies", "cli": "commands"}
ORDER = ["library", "recipe", "studies", "commands"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    return LAYERS.get(parts[1], "library") if len(parts) > 1 else "library"


def imports(module: str) -> Set[str]:
    """The package's modules that ``module`` imports, anywhere in it."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name != "espnet_lowrank":
                found.add(name)
    return found


GRAPH: Dict[str, Set[str]] = {module: imports(module) for module in MODULES}


def test_the_walk_sees_the_house():
    assert "espnet_lowrank.registration" in GRAPH["espnet_lowrank.bin.asr_train"]
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_up_a_layer(module):
    mine = ORDER.index(layer(module))
    upward = sorted(f"{name} ({layer(name)})" for name in GRAPH[module] if ORDER.index(layer(name)) > mine)
    assert not upward, f"{module} ({layer(module)}) imports {', '.join(upward)}"


def test_nothing_installed_imports_the_development_harness():
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in names if name.split(".")[0] in ("dev", "tests")], module


def shortest_way(start: str, goal: str):
    """The shortest chain of imports from ``start`` to ``goal``, or None."""
    came_from, frontier = {start: None}, [start]
    while frontier:
        here = frontier.pop(0)
        for name in sorted(GRAPH[here]):
            if name == goal:
                way = [name, here]
                while came_from[here] is not None:
                    here = came_from[here]
                    way.append(here)
                return list(reversed(way))
            if name not in came_from:
                came_from[name] = here
                frontier.append(name)
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_modules_import_each_other_in_a_circle(module):
    circle = shortest_way(module, module)
    assert circle is None, " -> ".join(circle)
