"""B2's build comparison: the same llama-cpp-python compiled with other flags, each measured in a child process.

The project installs a portable build (the Makefile's LLAMA_CMAKE_ARGS: x86-64-v3, no AVX-512, no AMX). Here the
same version is also built `-march=native` (what pip does by default) and portable + AVX-512, each into its own
folder under ~/.cache/token-streaming (built once per machine: ~5 min each on 2 cores), and measured on the
embedded model: tokens/s and time to first token at temperature 0. A build that crashes on this CPU is reported
with its signal: on AMX hosts the native build dies in `ggml_backend_amx_mul_mat` (llama.cpp issue 20824).

`python -m bench.llama_builds` prints the comparison alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "token-streaming" / "llama-builds"


def make_variable(name: str) -> str:
    return subprocess.run(["make", "-s", "-C", str(ROOT), f"print-{name}"], check=True, capture_output=True,
                          text=True).stdout.strip()


def variants() -> dict[str, str]:
    portable = make_variable("llama-cmake-args")
    avx512 = portable.replace("-DGGML_AVX512=OFF", "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON "
                                                  "-DGGML_AVX512_BF16=ON")
    return {"portable (installed)": portable, "portable + AVX-512": avx512,
            "native (pip's default)": "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF"}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def cpu_has(*flags: str) -> list[str]:
    present = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return [flag for flag in flags if f" {flag}" in present]


def build(cmake_args: str, version: str) -> Path:
    """A `pip install --target` folder holding llama-cpp-python built with these flags (cached by flags)."""
    key = hashlib.sha256(f"{version} {cmake_args}".encode()).hexdigest()[:12]
    target = CACHE / key
    if (target / ".built").is_file():
        return target
    wheels = target / "wheel"
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-cache-dir", "--no-deps", "--no-binary",
                    "llama-cpp-python", f"llama-cpp-python=={version}", "-w", str(wheels)], check=True, env=env)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-deps", "--no-index",
                    "--target", str(target / "site"), "--find-links", str(wheels), f"llama-cpp-python=={version}"],
                   check=True)
    (target / ".built").write_text(cmake_args)
    return target


_MEASURE = """
import json, sys, time
from llama_cpp import Llama, llama_print_system_info
path, threads, max_tokens, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llama = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
messages = [{"role": "system", "content": "你是一个有用的助手"},
            {"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
results = []
for run in range(runs + 1):
    llama.reset()
    started, first, tokens = time.perf_counter(), None, 0
    for chunk in llama.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            first = first or time.perf_counter()
    if run:  # the first run warms up
        results.append({"tps": tokens / (time.perf_counter() - started), "ttft_ms": (first - started) * 1000})
features = [part.split("=")[0].strip() for part in llama_print_system_info().decode().split("|") if "= 1" in part]
print(json.dumps({"runs": results, "features": features}))
"""


def measure(site: Path | None, model_path: Path, max_tokens: int, runs: int) -> dict[str, Any]:
    """tokens/s and TTFT of one build, in a child process (a crashing build only kills the child)."""
    env = {**os.environ, "PYTHONPATH": str(site)} if site is not None else dict(os.environ)
    child = subprocess.run([sys.executable, "-c", _MEASURE, str(model_path), str(os.cpu_count() or 1),
                            str(max_tokens), str(runs)],
                           capture_output=True, text=True, env=env, timeout=600, check=False)
    if child.returncode < 0:
        return {"crashed": signal.Signals(-child.returncode).name}
    if child.returncode != 0:
        return {"failed": (child.stderr.strip().splitlines() or ["?"])[-1][:200]}
    report = json.loads(child.stdout.strip().splitlines()[-1])
    tps = sorted(r["tps"] for r in report["runs"])
    ttft = sorted(r["ttft_ms"] for r in report["runs"])
    return {"tokens_per_s": {"median": tps[len(tps) // 2], "min": tps[0], "max": tps[-1]},
            "ttft_ms": {"median": ttft[len(ttft) // 2], "min": ttft[0], "max": ttft[-1]},
            "features": report["features"]}


def compare(max_tokens: int = 128, runs: int = 5) -> dict[str, Any]:
    from chains.common.settings import embedded_model_path

    model_path = embedded_model_path()
    assert model_path is not None
    version = make_variable("llama-cpp-version")
    out: dict[str, Any] = {"cpu": cpu_model(), "cpu_extensions": cpu_has("avx2", "avx512f", "avx512_vnni",
                                                                        "avx512_bf16", "amx_tile", "amx_int8"),
                           "builds": {}}
    for name, cmake_args in variants().items():
        # The installed build is the venv's own; the others are built (once) beside it.
        site = None if name.startswith("portable (installed)") else build(cmake_args, version) / "site"
        out["builds"][name] = {"cmake_args": cmake_args, **measure(site, model_path, max_tokens, runs)}
    return out


def table(result: dict[str, Any]) -> list[str]:
    lines = [f"Builds of llama.cpp on this CPU — {result['cpu']} ({', '.join(result['cpu_extensions'])}):", "",
             "| build | CMake flags | tokens/s | TTFT (ms) |", "| --- | --- | --- | --- |"]
    for name, row in result["builds"].items():
        if "crashed" in row or "failed" in row:
            outcome = f"crashed ({row['crashed']})" if "crashed" in row else f"failed: {row['failed']}"
            lines.append(f"| {name} | `{row['cmake_args']}` | {outcome} | – |")
            continue
        tps, ttft = row["tokens_per_s"], row["ttft_ms"]
        lines.append(f"| {name} | `{row['cmake_args']}` | {tps['median']:.1f} ({tps['min']:.1f}–{tps['max']:.1f}) | "
                     f"{ttft['median']:.1f} ({ttft['min']:.1f}–{ttft['max']:.1f}) |")
    return lines


if __name__ == "__main__":
    print("\n".join(table(compare())))
