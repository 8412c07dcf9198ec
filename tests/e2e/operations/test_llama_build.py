"""The llama.cpp build is the portable one the Makefile chose, and a build that crashes stops start-up cleanly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

from chains.models import llama_probe
from tests.support.servers import ROOT, clean_env


def make_variable(name: str) -> str:
    return subprocess.run(["make", "-s", f"print-{name}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_installed_library_has_exactly_the_instruction_sets_the_makefile_chose() -> None:
    chosen = dict(re.findall(r"-DGGML_([A-Z0-9_]+)=(ON|OFF)", make_variable("llama-cmake-args")))
    assert chosen.pop("NATIVE") == "OFF", "-march=native makes a library that only fits the CPU it was built on"
    compiled = dict(re.findall(r"(\w+) = (\d)", llama_cpp.llama_print_system_info().decode()))
    for flag, state in chosen.items():
        assert compiled.get(flag, "0") == ("1" if state == "ON" else "0"), (flag, compiled)
    # Whatever the flags say, AMX (crashes: llama.cpp issue 20824) and AVX-512 (absent on many CPUs) are not in.
    assert not {name for name, on in compiled.items() if on == "1" and name.startswith(("AMX", "AVX512"))}
    assert compiled["AVX2"] == "1"


def test_the_library_comes_from_the_folder_named_by_its_flags_not_from_pips_cache() -> None:
    dist_info = next(Path(llama_cpp.__file__).parent.parent.glob("llama_cpp_python-*.dist-info"))
    origin = json.loads((dist_info / "direct_url.json").read_text())["url"]
    assert origin.startswith(f"file://{make_variable('llama-wheels')}/"), origin


CRASHING_LLAMA_CPP = '''
"""Simulates a llama.cpp built for another CPU: the real package, whose first decode dies with SIGSEGV."""
import ctypes

__path__ = [{real!r}]  # every submodule is the real one
exec(compile(open({real_init!r}).read(), {real_init!r}, "exec"))
from .llama import Llama as _Llama


def _illegal_memory_access(self, tokens):
    ctypes.string_at(0)  # a real segmentation fault, as the AMX matmul kernel's


_Llama.eval = _illegal_memory_access
'''


@pytest.fixture
def crashing_llama_cpp(tmp_path: Path) -> Path:
    real = Path(llama_cpp.__file__).parent
    package = tmp_path / "crashing" / "llama_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(CRASHING_LLAMA_CPP.format(real=str(real), real_init=str(real / "__init__.py")))
    return package.parent


def test_a_library_that_crashes_stops_start_up_with_one_line(crashing_llama_cpp: Path, tmp_path: Path) -> None:
    env = clean_env(CHAT_PROVIDER="local", PYTHONPATH=str(crashing_llama_cpp), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1", "--port", "0"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("config error: the llama.cpp library crashes on this CPU (SIGSEGV"), lines[0]
    assert "make rebuild-llama" in lines[0]
    assert "Fatal Python error" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_a_working_library_passes_the_check_once_then_it_is_remembered(
        model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_probe, "CACHE_DIR", tmp_path)
    llama_probe.ensure_generation_works(model_path, threads=2)
    (marker,) = tmp_path.iterdir()
    assert marker.read_text().strip() == f"generated {llama_probe.PROBE_TOKENS} tokens"

    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("the check ran again although it had passed for this library, model and CPU")

    monkeypatch.setattr(llama_probe.subprocess, "run", no_child)
    llama_probe.ensure_generation_works(model_path, threads=2)
