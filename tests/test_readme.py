"""README and docs/ cannot drift from the code: README is a front page of at most 400 lines that links every
document; the settings table (docs/settings.md) is generated from `Settings`, README's Layout lists every module
under chains/ and every end-to-end surface, the error types (docs/protocol.md) are `ErrorType`, every link, path and
module named exists, and the performance figures are told as they are, not as a history.

In-process and fast: nothing here starts a server."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import get_args

import pytest

from chains.common.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCH_README = ROOT / "bench" / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, BENCH_README, *DOCS]
README_MAX_LINES = 400
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def between(text: str, marker: str) -> str:
    """The text between `<!-- marker:begin -->` and `<!-- marker:end -->` (each exactly once)."""
    begin, end = f"<!-- {marker}:begin -->\n", f"<!-- {marker}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"needs one {begin.strip()} and one {end}"
    return text.split(begin, 1)[1].split(end, 1)[0]


def table_rows(block: str) -> list[list[str]]:
    """The cells of a markdown table's body rows (header and separator left out); `\\|` is not a separator."""
    rows = [line for line in block.splitlines() if line.startswith("|")][2:]
    return [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, as GitHub makes them: a repeated title gets `-1`, `-2`, … after its first."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, title in headings(text):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every heading outside code blocks."""
    found, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"(#{1,6}) (.+)", line)):
            found.append((len(match.group(1)), match.group(2)))
    return found


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


# --- Settings ---------------------------------------------------------------------------------------------------------

def test_every_setting_has_a_description() -> None:
    missing = [name.upper() for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"give these settings a description= in chains/common/settings.py: {missing}"


def test_the_settings_table_is_the_generated_one() -> None:
    assert between(doc("settings.md"), "settings") == settings_table(), (
        "docs/settings.md's table differs from chains/common/settings.py: run `.venv/bin/python -m "
        "chains.common.settings` and paste its output between <!-- settings:begin --> and <!-- settings:end -->")


def test_the_settings_table_shows_no_secret_and_every_setting() -> None:
    rows = table_rows(settings_table())
    assert [row[0] for row in rows] == [f"`{name.upper()}`" for name in Settings.model_fields]
    for row in rows:
        assert "sk-" not in row[1] and "SecretStr" not in row[1], row


def test_the_security_table_names_settings_and_repeats_no_default() -> None:
    rows = table_rows(between(doc("security.md"), "security"))
    assert rows, "docs/security.md's table is empty"
    for first, *_ in rows:
        if first.startswith("(fixed"):
            continue
        names = re.findall(r"`([A-Z_]+)`", first)
        assert names and set(names) <= SETTING_NAMES, f"Security table: not a setting: {first}"
    # Limits that are settings and bound requests are all listed there.
    listed = {name for row in rows for name in re.findall(r"`([A-Z_]+)`", row[0])}
    limits = {name for name in SETTING_NAMES if name.startswith(("MAX_", "AUTH_")) or (
        name.endswith(("_TIMEOUT", "_RATE")) and not name.startswith(("STREAM_", "OPENAI_")))}
    assert limits <= listed, f"Security table lacks: {sorted(limits - listed)}"


def test_the_fixed_figures_the_docs_give_are_the_code() -> None:
    import uvicorn

    from chains.hosting import http_protocol, launcher

    # Security: "uvicorn's keep-alive timeout, 5 s; … for 1 s"; MIN_BODY_RATE: "min(5 s, BODY_TIMEOUT)".
    assert inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default == 5
    assert "timeout_keep_alive" not in inspect.getsource(launcher)
    assert http_protocol.LINGER_SECONDS == 1
    assert http_protocol.BODY_RATE_GRACE_SECONDS == 5
    security = doc("security.md")
    assert "keep-alive timeout, 5 s" in security and "for 1 s, then closes" in security
    # Reliability: "a client that does not read keeps the process at most 10 s longer".
    assert launcher.GRACEFUL_SHUTDOWN_SECONDS == 10
    assert "at most 10 s longer" in doc("operating.md")


# --- Errors -----------------------------------------------------------------------------------------------------------

def test_the_error_types_are_error_type() -> None:
    from chains.common.errors import STATUS_OF, ErrorType
    from chains.common.responses import refuse

    rows = {re.findall(r"`(\w+)`", row[0])[0]: row for row in table_rows(between(doc("protocol.md"), "error-types"))}
    documented, in_code = set(rows), set(get_args(ErrorType))
    assert documented == in_code, (
        f"docs/protocol.md's error types differ from chains.common.errors.ErrorType: only in the docs "
        f"{sorted(documented - in_code)}, only in the code {sorted(in_code - documented)}")
    for kind, row in rows.items():
        # bad_request is a refusal by Starlette or LangServe with their own 4xx status (400 when it is ours).
        status = {"4xx": "400"}.get(row[1], row[1]) if kind == "bad_request" else row[1]
        assert status == str(STATUS_OF[kind]), f"{kind}: docs say {row[1]}, the code {STATUS_OF[kind]}"
        retried = "retry-after" in refuse(400, kind, "x").headers
        assert ("↻" in row[0]) == retried, (
            f"{kind}: the docs' ↻ (Retry-After) is {'↻' in row[0]}, the code {retried}")


# --- Layout -----------------------------------------------------------------------------------------------------------

def chains_entries() -> set[str]:
    """Every module under chains/ (a file) and every package (a folder with __init__.py), as README names them."""
    entries = {path.relative_to(ROOT).as_posix() for path in (ROOT / "chains").rglob("*.py")
               if path.name != "__init__.py" and "__pycache__" not in path.parts}
    entries |= {path.parent.relative_to(ROOT).as_posix() + "/" for path in (ROOT / "chains").rglob("__init__.py")}
    return entries


def layout_entries(readme: str) -> list[str]:
    block = between(readme, "layout")
    return [line.split()[0] for line in block.splitlines() if line.strip() and not line.startswith("```")]


def test_the_layout_lists_every_module_under_chains(readme: str) -> None:
    listed = layout_entries(readme)
    assert len(listed) == len(set(listed)), "README's Layout lists a path twice"
    in_readme = {entry for entry in listed if entry.startswith("chains/")}
    in_code = chains_entries()
    assert not in_code - in_readme, f"add to README's Layout: {sorted(in_code - in_readme)}"
    assert not in_readme - in_code, f"in README's Layout but gone: {sorted(in_readme - in_code)}"


def test_the_layout_lists_every_test_surface_and_the_fixture_factory(readme: str) -> None:
    listed = set(layout_entries(readme))
    surfaces = {path.parent.relative_to(ROOT).as_posix() + "/"
                for path in (ROOT / "tests" / "e2e").glob("*/__init__.py")}
    assert surfaces, "tests/e2e/ has no surface folders"
    assert not surfaces - listed, f"add to README's Layout: {sorted(surfaces - listed)}"
    for required in ("tests/unit/", "tests/e2e/", "tests/support/", "tests/support/fixtures.py"):
        assert required in listed, f"README's Layout lacks {required}"


def test_the_layout_lists_the_top_level_and_only_what_exists(readme: str) -> None:
    listed = layout_entries(readme)
    for required in ("server.py", "playground/", "docs/", "bench/", "tests/"):
        assert required in listed, f"README's Layout lacks {required}"
    gone = [entry for entry in listed if not (ROOT / entry).exists()]
    assert not gone, f"in README's Layout but gone: {gone}"


# --- Links, paths and modules named anywhere --------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_link_resolves(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name}: link to a missing file: {target}"
        assert ROOT in linked.parents or linked == ROOT, f"{path.name}: link out of the repository: {target}"
        if anchor:
            assert anchor in anchors(linked.read_text(encoding="utf-8")), (
                f"{path.name}: link to a missing heading: {target}")


def test_readme_is_a_front_page(readme: str) -> None:
    lines = len(readme.splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines: move sections to docs/ (at most {README_MAX_LINES})")
    sections = [title for level, title in headings(readme) if level == 2]
    assert sections[:2] == ["Quick start", "Documents"], sections[:3]
    quick_start = readme.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick_start.split("```bash\n", 1)[1].split("```", 1)[0]
                .splitlines()]
    assert commands == ["make run", "make test"]


def test_readme_links_every_document(readme: str) -> None:
    assert DOCS, "docs/ has no documents"
    documents = readme.split("## Documents\n", 1)[1].split("\n## ", 1)[0]
    linked = {target.partition("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", documents)}
    unlinked = [path.relative_to(ROOT).as_posix() for path in DOCS if path.relative_to(ROOT).as_posix() not in linked]
    assert not unlinked, f"README's Documents does not link: {unlinked}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_path_and_module_named_exists(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for named in set(re.findall(r"(?<![\w/.-])((?:chains|bench|tests|docs|playground)/[\w/.-]*[\w/])", text)):
        if named.startswith(("tests/artifacts", "tests/js/node_modules", "playground/node_modules")) or re.match(
                r"playground/\w+/dist", named):
            continue  # made by the tests or the builds
        assert (ROOT / named).exists(), f"{path.name} names {named}, which does not exist"
    for dotted in set(re.findall(r"(?<![\w/.])(chains(?:\.\w+)+)", text)):
        assert names_something(dotted), f"{path.name} names {dotted}, which is no module or name in one"


def module_source(dotted: str) -> str | None:
    """The source of the module or package `dotted` names (a package: its __init__.py), or None."""
    base = ROOT / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return None


def names_something(dotted: str) -> bool:
    """`chains.a.b` is a module or package, or `chains.a.b.Name` a name that module defines or imports."""
    if module_source(dotted) is not None:
        return True
    module, _, name = dotted.rpartition(".")
    source = module_source(module)
    definition = rf"^(?:(?:async )?def |class ){name}\b|^{name}\s*[:=]|^(?:from \S+ )?import .*\b{name}\b"
    return source is not None and re.search(definition, source, re.MULTILINE) is not None


def test_the_name_check_sees_a_name_that_is_gone() -> None:
    assert names_something("chains.common.errors.ErrorType") and names_something("chains.middleware.install")
    assert names_something("chains.hosting") and names_something("chains.common.settings")
    assert not names_something("chains.api.errors") and not names_something("chains.settings")
    assert not names_something("chains.common.errors.NoSuchName")


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_document_has_one_title(path: Path) -> None:
    titles = [title for level, title in headings(path.read_text(encoding="utf-8")) if level == 1]
    assert len(titles) == 1, f"{path.name}: one `# title` (the first line), not {titles}"


# --- The present, not a history ---------------------------------------------------------------------------------------

# How the figures were reached belongs in the commit messages; the documents say what they are. These phrases tell
# a history: an issue of this project, a date something changed, a commit, a before/after comparison of our code.
HISTORY = [
    (r"(?<!llama\.cpp )\bissues? \d+", "an issue of this project"),
    (r"\b(?:until|since|before|after) \d{4}-\d{2}-\d{2}", "a date something changed"),
    (r"\((?:before|after)?\s*[0-9a-f]{7,40}\)", "a commit"),
    (r"\breconcil", "a reconciliation of earlier figures"),
    (r"\bwhat each step gave\b|\bwhen our [\w -]+ was\b", "steps of past work"),
]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_the_documents_tell_no_history(path: Path) -> None:
    text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8"))
    found = [f"{what}: {match.group(0)!r}" for pattern, what in HISTORY
             for match in re.finditer(pattern, text, re.IGNORECASE)]
    assert not found, f"{path.name} tells a history (say what the figures are now): {found}"


def test_the_history_check_sees_history() -> None:
    for sample in ("what issue 18 gave", "Until 2026-11-26 B2 compared", "before (201acfe)", "B2, reconciled",
                   "it was 0.44× when our in-memory path was half as fast"):
        assert any(re.search(pattern, sample, re.IGNORECASE) for pattern, _ in HISTORY), sample
    assert not any(re.search(pattern, "llama.cpp issue 20824", re.IGNORECASE) for pattern, _ in HISTORY)
