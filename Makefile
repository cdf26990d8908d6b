# One command each: `make demo` installs and runs the demo, `make test` installs and runs the tests.
# torch is installed first and pinned: a bare requirement would pull several GB of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
DEMO ?= /tmp/moeprune-demo

.PHONY: install test demo lint bench bench-calib-check

$(BIN)/moeprune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/moeprune

test: install
	$(BIN)/python -m pytest -q -n 2

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
# llama-cpp-python builds llama.cpp from source, ~8.5 CPU-minutes (docs/gguf.md); `make llamacpp test` runs them.
LLAMACPP ?= llama-cpp-python==0.3.36
llamacpp: install
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q $(LLAMACPP)
