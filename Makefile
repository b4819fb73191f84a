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

.PHONY: install protos lint format test demo bench clean

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

test: lint $(CHROMIUM)
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/taskbroker demo --dashboard-port 8787

bench: $(STAMP)
	$(BIN)/python -m tests.bench
	$(BIN)/python -m tests.bench --tracing
	$(BIN)/python -m tests.bench_placement

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info $(NODE_DIR)/node_modules
