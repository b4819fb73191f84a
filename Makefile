# Taskbroker: `make demo` to see it run, `make test` to check it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install protos lint format test demo bench bench-quick bench-compare clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

protos: $(STAMP)
	$(BIN)/python protos/generate.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/taskbroker demo

bench: $(STAMP)
	$(BIN)/python -m tests.bench
	$(BIN)/python -m tests.bench_workers
	$(BIN)/python -m tests.bench_placement

bench-quick: $(STAMP)
	$(BIN)/python -m tests.bench --quick
	$(BIN)/python -m tests.bench_workers --quick
	$(BIN)/python -m tests.bench_placement --quick

# Before and after, alternating: BASE is a checkout of the commit to compare with.
bench-compare: $(STAMP)
	$(BIN)/python -m tests.bench_compare $(BASE) --runs $(or $(RUNS),3) $(QUICK)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
