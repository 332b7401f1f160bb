# The two commands a fresh machine needs: `make serve` and `make test`.
# Each builds its own virtual environment first (the first run installs torch and the rest
# from pip: a few minutes). Variables (override on the command line, e.g. `make serve PORT=9000`):
#   PYTHON       the interpreter that creates the environment (3.11 or newer)
#   VENV         where the environment goes
#   HOST, PORT   where `make serve` listens
#   TORCH_INDEX  a pip index to take torch and torchvision from, e.g. the CPU-only build:
#                make serve TORCH_INDEX=https://download.pytorch.org/whl/cpu
#                (read when the environment is created: `make clean` first to switch)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
TORCH_INDEX ?=

.PHONY: serve test lint bench perf-analyzer gpu-check loadtest train-demo docs clean

$(BIN)/.installed: pyproject.toml
	@echo "model-serve: installing into $(VENV) (the first run takes a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install -q torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

serve: $(BIN)/.installed
	@echo "model-serve: starting on http://$(HOST):$(PORT); ready when http://$(HOST):$(PORT)/readyz answers 200"
	$(BIN)/model-serve serve --host $(HOST) --port $(PORT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check service models tests load_tests
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python load_tests/benchmark.py

# Triton's perf_analyzer against the demo's two v2 doors (fetched into .cache/ on first use;
# needs Debian's libb64-0d, else it says so and exits 0)
perf-analyzer: $(BIN)/.installed
	$(BIN)/python load_tests/perf_analyzer.py

# GPU tests and a GPU benchmark (under 8 minutes); without CUDA it says so and exits 0
gpu-check: $(BIN)/.installed
	$(BIN)/python load_tests/gpu_check.py --out reports/gpu-check

loadtest: $(BIN)/.installed
	$(BIN)/python load_tests/run_locust.py --users 20 --duration 30 --max-p99-ms 2000

train-demo: $(BIN)/.installed
	$(BIN)/python -m models.demo_training --out models/checkpoints

docs: $(BIN)/.installed
	$(BIN)/python -m service.config_reference > docs/configuration.md.new && mv docs/configuration.md.new docs/configuration.md

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
