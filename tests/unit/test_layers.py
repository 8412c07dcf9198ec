"""Imports point one way, package by package: hosting → middleware → api → observability → streaming →
runnables → models → common. No two packages of chains/ import each other, in either direction; the streaming
core, the runnables, the models and the pure half of common import no web framework. Read from the source with
`ast`: each chains/ file's own imports (functions and branches too), then, for the framework check, what they
import in turn within chains/."""

from __future__ import annotations

import ast
from functools import cache
from itertools import combinations
from pathlib import Path

import pytest

CHAINS = Path(__file__).resolve().parents[2] / "chains"
# Highest first: a package may import only those after it.
ORDER = ("hosting", "middleware", "api", "observability", "streaming", "runnables", "models", "common")
WEB_FRAMEWORKS = {"fastapi", "starlette", "uvicorn", "sse_starlette", "langserve", "httptools"}
# The modules that must run without a web framework: the core and everything it stands on.
FRAMEWORK_FREE = ("chains.streaming", "chains.runnables", "chains.models", "chains.common.errors",
                  "chains.common.scope", "chains.common.settings", "chains.common.keys")


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module `path` imports, anywhere in it (functions and branches too); relative imports resolved."""
    modules: set[str] = set()
    if package is None:
        package = ".".join(path.relative_to(CHAINS.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                modules.add(".".join([*base, *([node.module] if node.module else [])]))
            else:
                modules.add(node.module or "")
    return modules


def module_name(path: Path) -> str:
    parts = path.relative_to(CHAINS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in CHAINS.rglob("*.py")}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "chains" and len(parts) >= 2 and parts[1] in ORDER else None


@cache
def package_imports() -> dict[str, set[str]]:
    """For each package of chains/, the other packages its modules import (read once: the source does not change
    during a run)."""
    graph: dict[str, set[str]] = {package: set() for package in ORDER}
    for module, path in MODULES.items():
        source = package_of(module)
        if source is None:
            continue
        for imported in imported_modules(path):
            target = package_of(imported) if imported.startswith("chains.") else None
            if target is not None and target != source:
                graph[source].add(target)
    return graph


def test_every_package_is_in_the_order_and_no_module_sits_at_the_root() -> None:
    packages = {path.name for path in CHAINS.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert packages == set(ORDER)
    assert sorted(path.name for path in CHAINS.glob("*.py")) == []  # a namespace package: nothing of its own


@pytest.mark.parametrize(("upper", "lower"), list(combinations(ORDER, 2)))
def test_no_package_imports_one_above_it(upper: str, lower: str) -> None:
    graph = package_imports()
    assert upper not in graph[lower], f"chains.{lower} imports chains.{upper}, which stands above it"


def test_no_two_packages_import_each_other() -> None:
    graph = package_imports()
    assert [(a, b) for a, b in combinations(ORDER, 2) if b in graph[a] and a in graph[b]] == []


def framework_imports(module: str, seen: set[str]) -> set[str]:
    """The web frameworks `module` imports, itself or through the chains modules it imports."""
    if module in seen or module not in MODULES:
        return set()
    seen.add(module)
    found: set[str] = set()
    for imported in imported_modules(MODULES[module]):
        if imported.split(".")[0] in WEB_FRAMEWORKS:
            found.add(f"{module} imports {imported}")
        found |= framework_imports(imported, seen)
    return found


def test_the_core_and_what_it_stands_on_import_no_web_framework() -> None:
    roots = [module for module in MODULES if module.startswith(FRAMEWORK_FREE)]
    assert "chains.streaming.generation" in roots and "chains.models.local" in roots
    offenders: set[str] = set()
    for module in roots:
        offenders |= framework_imports(module, set())
    assert offenders == set()


def test_the_checker_sees_imports_in_every_form(tmp_path: Path) -> None:
    probe = CHAINS / "models" / "base.py"
    assert "langchain_core.messages" in imported_modules(probe)
    source = tmp_path / "probe.py"
    source.write_text("import fastapi.responses\nfrom starlette import types\nif True:\n    import uvicorn as u\n"
                      "def f():\n    from sse_starlette.sse import EventSourceResponse\n"
                      "from ..api import errors\nfrom . import base\n")
    assert imported_modules(source, "chains.models") == {
        "fastapi.responses", "starlette", "uvicorn", "sse_starlette.sse", "chains.api", "chains.models"}


def test_the_checker_sees_an_upward_import() -> None:
    graph = package_imports()
    assert "common" in graph["streaming"] and "streaming" in graph["api"]  # the real edges it must see
