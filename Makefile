# Two commands do all the set-up: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench install system-deps sandbox-deps services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes. torch/torchvision are pinned there.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP) sandbox-deps
	$(BIN)/secateurs serve

# Debian packages the sandbox for uploaded models needs (bubblewrap, util-linux,
# libseccomp2) and those the browser tests need (Chromium); installs only when missing.
system-deps:
	@bash scripts/system-deps.sh

sandbox-deps:
	@bash scripts/system-deps.sh sandbox

# Start PostgreSQL and Redis when they are not running (the e2e tests need both).
services:
	@bash scripts/services.sh

test: $(STAMP) system-deps services
	$(BIN)/python -m pytest --durations=25

# The style gates CI runs before the tests: lint, formatting, types, process boundaries
# (the import contracts in pyproject.toml).
LINTED := app infra worker contract cli secateurs_client tests bench
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy app infra worker contract cli secateurs_client
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) data test-output
