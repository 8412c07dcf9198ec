"""Imports point one way: hosting → HTTP surface (chains/api, chains/middleware) → chains → models. Outside the
HTTP and hosting folders no module under chains/ imports an HTTP framework or server, nor the layers above it.
Read from the source with `ast`: each chains/ file's own imports, not what its imports import."""

from __future__ import annotations

import ast
from pathlib import Path

CHAINS = Path(__file__).resolve().parents[2] / "chains"
HTTP_LAYERS = ("api", "middleware", "hosting")
HTTP_PACKAGES = {"fastapi", "starlette", "uvicorn", "sse_starlette", "langserve", "httptools"}


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


def below_the_http_layers() -> list[Path]:
    files = [path for path in CHAINS.rglob("*.py") if path.relative_to(CHAINS).parts[0] not in HTTP_LAYERS]
    assert CHAINS / "chat.py" in files and CHAINS / "models" / "local.py" in files
    return files


def test_no_module_below_the_http_layers_imports_an_http_framework() -> None:
    offenders = {str(path.relative_to(CHAINS.parent)): sorted(m for m in imported_modules(path)
                                                               if m.split(".")[0] in HTTP_PACKAGES)
                 for path in below_the_http_layers()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_below_the_http_layers_imports_the_layers_above() -> None:
    above = tuple(f"chains.{layer}" for layer in HTTP_LAYERS)
    offenders = {str(path.relative_to(CHAINS.parent)): sorted(m for m in imported_modules(path)
                                                               if m == "server" or m.startswith(above))
                 for path in below_the_http_layers()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_models_do_not_import_the_chains() -> None:
    offenders = {str(path.relative_to(CHAINS.parent)): sorted(m for m in imported_modules(path)
                                                               if m == "chains.chat")
                 for path in (CHAINS / "models").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_imports_in_every_form(tmp_path: Path) -> None:
    probe = CHAINS / "models" / "base.py"
    assert "langchain_core.messages" in imported_modules(probe)
    source = tmp_path / "probe.py"
    source.write_text("import fastapi.responses\nfrom starlette import types\nif True:\n    import uvicorn as u\n"
                      "def f():\n    from sse_starlette.sse import EventSourceResponse\n"
                      "from ..api import errors\nfrom . import base\n")
    assert imported_modules(source, "chains.models") == {
        "fastapi.responses", "starlette", "uvicorn", "sse_starlette.sse", "chains.api", "chains.models"}

