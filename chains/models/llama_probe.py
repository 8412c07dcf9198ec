"""Does llama.cpp generate on this machine? Asked once, in a child process, before the server loads the model.

A llama.cpp built for another CPU, or with kernels that crash on this one (the AMX matmul of a `-march=native`
build on Sapphire Rapids: llama.cpp issue 20824), dies with SIGSEGV/SIGILL at the first matmul. A signal cannot be
caught in-process, so without this check the server would start, accept requests, and die at the first one. The
child loads the GGUF and decodes a few tokens; if it dies, start-up stops with one line naming cause and fix.

A passing check is remembered (by library file, model file and CPU flags), so later starts skip it.
Run as `python -m chains.models.llama_probe MODEL_PATH THREADS` it is the child.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from chains.common.settings import ConfigError

PROBE_TIMEOUT_SECONDS = 120
PROBE_TOKENS = 4
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "token-streaming" / "llama-probe"
REBUILD_HINT = "rebuild it for this machine with portable flags: make rebuild-llama (docs/models.md)"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _library_files() -> list[Path]:
    """llama_cpp's package files and its compiled libraries, found without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ConfigError("CHAT_PROVIDER=local needs llama-cpp-python, which is not installed (make install)")
    package = Path(spec.origin).parent
    return [Path(spec.origin), *sorted(package.glob("lib/*.so*"))]


def probe_key(model_path: Path) -> str:
    parts = [_file_identity(path) for path in _library_files()]
    parts += [_file_identity(model_path), _cpu_flags(), sys.executable]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def ensure_generation_works(model_path: Path, threads: int) -> None:
    """Raises `ConfigError` (one line) unless a child process can load the model and decode with it."""
    marker = CACHE_DIR / probe_key(model_path)
    if marker.is_file():
        return
    try:
        child = subprocess.run(
            [sys.executable, "-m", "chains.models.llama_probe", str(model_path), str(threads)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the llama.cpp library did not finish a {PROBE_TOKENS}-token test generation in "
                          f"{PROBE_TIMEOUT_SECONDS}s on this machine; {REBUILD_HINT}") from None
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        raise ConfigError(f"the llama.cpp library crashes on this CPU ({name} in a test generation: built for "
                          f"another machine, or with AMX kernels, llama.cpp issue 20824); {REBUILD_HINT}")
    if child.returncode != 0:
        last = (child.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1][:300]
        raise ConfigError(f"LOCAL_MODEL_PATH: cannot load {model_path}: {last}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    marker.write_text(child.stdout.decode(errors="replace"))


def _child(model_path: str, threads: int) -> None:
    from llama_cpp import Llama

    llama = Llama(model_path=model_path, n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = llama.tokenize(b"Hello, how are you?")
    produced = 0
    for _ in llama.generate(tokens, temp=0.0):
        produced += 1
        if produced >= PROBE_TOKENS:
            break
    print(f"generated {produced} tokens")


if __name__ == "__main__":
    try:
        _child(sys.argv[1], int(sys.argv[2]))
    except Exception as exc:  # noqa: BLE001 - the parent reports the last line
        print(exc, file=sys.stderr)
        sys.exit(1)
