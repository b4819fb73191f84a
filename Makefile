# Taskbroker: `make demo` to see it run, `make test` to check it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The JavaScript conformance client and buf, from the npm registry (tests/conformance).
NODE_DIR := tests/conformance
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
BUF := $(NODE_DIR)/node_modules/.bin/buf
SUDO := $(if $(shell command -v sudo),sudo)
# The dashboard's browser tests drive Debian's Chromium (Playwright's own download is not used).
CHROMIUM := /usr/bin/chromium

.PHONY: install protos lock lint format test test-fast demo bench bench-quick bench-compare bench-postgres clean postgres

install: $(STAMP) $(NODE_STAMP) $(CHROMIUM)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# node and npm come from the system's packages when the machine has none.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	command -v node >/dev/null && command -v npm >/dev/null \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm)
	node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
		|| (echo "tests/conformance needs Node 18 or later, found $$(node --version)" >&2; exit 1)
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

$(CHROMIUM):
	$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium

protos: $(STAMP)
	$(BIN)/python protos/generate.py

# The images' pinned dependencies (deploy/requirements.lock), from pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv==0.13.9
	$(BIN)/uv pip compile pyproject.toml deploy/build-requirements.in --extra prometheus \
	    --universal --python-version 3.11 --generate-hashes \
	    --custom-compile-command "make lock" --quiet -o deploy/requirements.lock

lint: $(STAMP) $(NODE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BUF) lint protos
	BUF=$(BUF) protos/breaking.sh

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# On two processes: every test has its own ports (0), directories and databases.
test: lint $(CHROMIUM) postgres
	$(BIN)/pytest -q -n 2

# Without the slow tests (the ones that run taskbroker processes for seconds); CI and
# make test run them all.
test-fast: $(STAMP) $(CHROMIUM) postgres
	$(BIN)/pytest -q -n 2 -m "not slow"

# The tests start a private PostgreSQL server (tests/support/postgres.py); install its
# programs from the system's packages when they are missing.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	|| { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	     $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; }

demo: $(STAMP)
	$(BIN)/taskbroker demo --dashboard-port 8787

bench: $(STAMP) postgres
	$(BIN)/python -m tests.bench
	$(BIN)/python -m tests.bench_workers
	$(BIN)/python -m tests.bench --tls
	$(BIN)/python -m tests.bench --token
	$(BIN)/python -m tests.bench_placement
	$(BIN)/python -m tests.bench_observers
	$(BIN)/python -m tests.bench_postgres

# PostgreSQL next to SQLite, and three brokers on one database.
bench-postgres: $(STAMP) postgres
	$(BIN)/python -m tests.bench_postgres

bench-quick: $(STAMP)
	$(BIN)/python -m tests.bench --quick
	$(BIN)/python -m tests.bench_workers --quick
	$(BIN)/python -m tests.bench_placement --quick
	$(BIN)/python -m tests.bench_observers --quick

# Before and after, alternating: BASE is a checkout of the commit to compare with.
bench-compare: $(STAMP)
	$(BIN)/python -m tests.bench_compare $(BASE) --runs $(or $(RUNS),3) $(QUICK)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info $(NODE_DIR)/node_modules
