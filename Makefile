# The two commands a fresh machine needs: `make serve` and `make test`.
# Each builds its own virtual environment first (torch comes from pip; on the
# project's build machines a local mirror serves it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint bench loadtest train-demo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

serve: $(BIN)/.installed
	$(BIN)/model-serve serve --host $(HOST) --port $(PORT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check service models tests load_tests
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python load_tests/benchmark.py

loadtest: $(BIN)/.installed
	$(BIN)/python load_tests/run_locust.py --users 20 --duration 30 --max-p99-ms 2000

train-demo: $(BIN)/.installed
	$(BIN)/python -m models.demo_training --out models/checkpoints

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
