# Taskbroker: `make demo` to see it run, `make test` to check it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install protos lint format test demo bench bench-postgres clean postgres

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

test: lint postgres
	$(BIN)/pytest -q

# The tests start a private PostgreSQL server (tests/support/postgres.py); install its
# programs from the system's packages when they are missing.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	|| { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	     $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; }

demo: $(STAMP)
	$(BIN)/taskbroker demo

bench: $(STAMP) postgres
	$(BIN)/python -m tests.bench
	$(BIN)/python -m tests.bench --tracing
	$(BIN)/python -m tests.bench_placement
	$(BIN)/python -m tests.bench_postgres

# PostgreSQL next to SQLite, and three brokers on one database.
bench-postgres: $(STAMP) postgres
	$(BIN)/python -m tests.bench_postgres

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
