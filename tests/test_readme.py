"""README cannot drift from the code: its settings table is generated from `Settings`, its Layout lists every
module under chains/, its error types are `ErrorType`, and every link, path and module it names exists.

In-process and fast: nothing here starts a server."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import get_args

import pytest
from chains.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCH_README = ROOT / "bench" / "README.md"
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def between(text: str, marker: str) -> str:
    """The text between `<!-- marker:begin -->` and `<!-- marker:end -->` (each exactly once)."""
    begin, end = f"<!-- {marker}:begin -->\n", f"<!-- {marker}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"README needs one {begin.strip()} and one {end}"
    return text.split(begin, 1)[1].split(end, 1)[0]


def table_rows(block: str) -> list[list[str]]:
    """The cells of a markdown table's body rows (header and separator left out); `\\|` is not a separator."""
    rows = [line for line in block.splitlines() if line.startswith("|")][2:]
    return [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


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


# --- Settings ------------------------------------------------------------------------------------------------------

def test_every_setting_has_a_description() -> None:
    missing = [name.upper() for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"give these settings a description= in chains/settings.py: {missing}"


def test_the_settings_table_is_the_generated_one(readme: str) -> None:
    assert between(readme, "settings") == settings_table(), (
        "README's settings table differs from chains/settings.py: run `.venv/bin/python -m chains.settings` and "
        "paste its output between <!-- settings:begin --> and <!-- settings:end -->")


def test_the_settings_table_shows_no_secret_and_every_setting() -> None:
    rows = table_rows(settings_table())
    assert [row[0] for row in rows] == [f"`{name.upper()}`" for name in Settings.model_fields]
    for row in rows:
        assert "sk-" not in row[1] and "SecretStr" not in row[1], row


def test_the_security_table_names_settings_and_repeats_no_default(readme: str) -> None:
    rows = table_rows(between(readme, "security"))
    assert rows, "README's Security table is empty"
    for first, *_ in rows:
        if first.startswith("(fixed"):
            continue
        names = re.findall(r"`([A-Z_]+)`", first)
        assert names and set(names) <= SETTING_NAMES, f"Security table: not a setting: {first}"
    # Limits that are settings and bound requests are all listed there.
    listed = {name for row in rows for name in re.findall(r"`([A-Z_]+)`", row[0])}
    limits = {name for name in SETTING_NAMES if name.startswith(("MAX_", "AUTH_")) or name.endswith(
        ("_TIMEOUT", "_RATE")) and not name.startswith(("STREAM_", "OPENAI_"))}
    assert limits <= listed, f"Security table lacks: {sorted(limits - listed)}"


def test_the_fixed_figures_readme_gives_are_the_code(readme: str) -> None:
    import uvicorn

    from chains.hosting import http_protocol, launcher

    # Security: "uvicorn's keep-alive timeout, 5 s; … for 1 s"; MIN_BODY_RATE: "min(5 s, BODY_TIMEOUT)".
    assert inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default == 5
    assert "timeout_keep_alive" not in inspect.getsource(launcher)
    assert http_protocol.LINGER_SECONDS == 1
    assert http_protocol.BODY_RATE_GRACE_SECONDS == 5
    assert "keep-alive timeout, 5 s" in readme and "for 1 s, then closes" in readme
    # Reliability: "a client that does not read keeps the process at most 10 s longer".
    assert launcher.GRACEFUL_SHUTDOWN_SECONDS == 10
    assert "at most 10 s longer" in readme


# --- Errors --------------------------------------------------------------------------------------------------------

def test_the_error_types_are_error_type(readme: str) -> None:
    from chains.api.errors import STATUS_OF, ErrorType, refuse

    rows = {re.findall(r"`(\w+)`", row[0])[0]: row for row in table_rows(between(readme, "error-types"))}
    assert set(rows) == set(get_args(ErrorType)), (
        f"README's error types differ from chains.api.errors.ErrorType: only in README {sorted(set(rows) - set(get_args(ErrorType)))}, "
        f"only in the code {sorted(set(get_args(ErrorType)) - set(rows))}")
    for kind, row in rows.items():
        if kind in STATUS_OF:
            assert row[1] == str(STATUS_OF[kind]), f"{kind}: README says {row[1]}, the code {STATUS_OF[kind]}"
        retried = "retry-after" in refuse(400, kind, "x").headers
        assert ("↻" in row[0]) == retried, f"{kind}: README's ↻ (Retry-After) is {'↻' in row[0]}, the code {retried}"


# --- Layout --------------------------------------------------------------------------------------------------------

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


def test_the_layout_lists_the_top_level_and_only_what_exists(readme: str) -> None:
    listed = layout_entries(readme)
    for required in ("server.py", "playground/", "bench/", "tests/"):
        assert required in listed, f"README's Layout lacks {required}"
    gone = [entry for entry in listed if not (ROOT / entry).exists()]
    assert not gone, f"in README's Layout but gone: {gone}"


# --- Links, paths and modules named anywhere -----------------------------------------------------------------------

@pytest.mark.parametrize("path", [README, BENCH_README], ids=["README", "bench-README"])
def test_every_link_resolves(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name}: link to a missing file: {target}"
        if anchor:
            anchors = {slug(title) for _, title in headings(linked.read_text(encoding="utf-8"))}
            assert anchor in anchors, f"{path.name}: link to a missing heading: {target}"


def test_the_first_screen_is_quick_start_then_contents(readme: str) -> None:
    sections = [title for level, title in headings(readme) if level == 2]
    assert sections[:2] == ["Quick start", "Contents"], sections[:3]
    quick_start = readme.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick_start.split("```bash\n", 1)[1].split("```", 1)[0]
                .splitlines()]
    assert commands == ["make run", "make test"]
    contents = readme.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(#([^)]+)\)", contents))
    unlisted = [title for title in sections[2:] if slug(title) not in linked]
    assert not unlisted, f"README's Contents does not link: {unlisted}"
    assert len(readme[:readme.index("## Contents")].splitlines()) + len(contents.splitlines()) < 60


@pytest.mark.parametrize("path", [README, BENCH_README], ids=["README", "bench-README"])
def test_every_path_and_module_named_exists(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for named in set(re.findall(r"(?<![\w/.-])((?:chains|bench|tests)/[\w/.-]*[\w/])", text)):
        if named.startswith(("tests/artifacts", "tests/js/node_modules")):
            continue  # made by the tests
        assert (ROOT / named).exists(), f"{path.name} names {named}, which does not exist"
    for dotted in set(re.findall(r"(?<![\w/.])(chains(?:\.\w+)+)", text)):
        parts = dotted.split(".")
        modules = [".".join(parts[:i]) for i in range(2, len(parts) + 1)
                   if (ROOT / Path(*parts[:i])).with_suffix(".py").exists() or (ROOT / Path(*parts[:i])).is_dir()]
        assert modules, f"{path.name} names {dotted}, which is no module"
