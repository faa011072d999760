"""The package's floor plan holds: which wing may import which, no import cycle, docstrings.

Read from the sources with ast (every import counts: module level, inside functions, and under
TYPE_CHECKING), so a new arrow shows up here before it shows up as a tangle.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

import pytest
from conftest import REPO

SOURCE = os.path.join(REPO, "agent")
# what each wing may import besides itself (the top-level pktpath package is for everyone)
ALLOWED = {
    "core": set(),
    "view": {"core"},
    "host": {"core"},
    "k8s": {"core", "view", "host"},
    "cli": {"core", "view", "host", "k8s"},  # k8s: `pktpath agent` starts the node agent
}


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for folder, _dirs, files in os.walk(os.path.join(SOURCE, "pktpath")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, SOURCE)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports(path: str, dotted: str, known: set[str]) -> Iterator[str]:
    """The package's modules that the module at path imports."""
    with open(path) as source:
        tree = ast.parse(source.read())
    package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("pktpath"):
                yield name


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: set(imports(path, m, set(known))) - {m} for m, path in known.items()}


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_there_is_no_top_level_agent_package() -> None:
    """agent/ is a source root: pip installs pktpath, never a module named agent."""
    assert not [name for name in os.listdir(SOURCE) if name.endswith(".py")]


@pytest.mark.parametrize("module", sorted(modules()))
def test_a_wing_imports_only_what_its_plan_allows(module: str) -> None:
    own = wing(module)
    if own is None:
        return  # pktpath/__init__ and __main__
    arrows = {target: wing(target) for target in graph()[module]}
    wrong = {t for t, w in arrows.items() if w is not None and w != own and w not in ALLOWED[own]}
    assert not wrong, f"{module} ({own}) imports {sorted(wrong)}"


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target):], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_says_what_it_is(module: str) -> None:
    with open(modules()[module]) as source:
        docstring = ast.get_docstring(ast.parse(source.read()))
    assert docstring and len(docstring) > 20, f"{module} has no docstring"
