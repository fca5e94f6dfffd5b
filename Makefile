# Two commands do everything: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup stack-up stack-down stack-status demo test test-unit test-integration lint bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv, install the project, compile the capture's hot path (idempotent)
	@$(PY) -m pipeline.native build --quiet

stack-up: setup ## Install (once) and start PostgreSQL, Kafka, Redis, Elasticsearch, MariaDB on loopback
	$(VENV)/bin/cdc stack up

stack-down: setup ## Stop the local stack
	$(VENV)/bin/cdc stack down

stack-status: setup ## Show which servers run and where
	$(VENV)/bin/cdc stack status

demo: setup ## Run the pipeline end to end on the local stack and print a summary
	$(VENV)/bin/cdc demo $(DEMO_ARGS)

test: setup ## All tests: unit, property and integration (starts the stack it needs)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: setup ## Fast tests only (no servers)
	$(PY) -m pytest -q -m "not integration" $(PYTEST_ARGS)

test-integration: setup ## Integration tests against the real servers
	$(PY) -m pytest -q -m integration $(PYTEST_ARGS)

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check pipeline agents tests
	$(VENV)/bin/mypy pipeline agents

bench: setup ## Benchmarks (see bench/README.md)
	$(PY) -m bench $(BENCH_ARGS)

clean: ## Remove the virtualenv and the stack's state (downloads stay cached)
	-$(VENV)/bin/cdc stack down
	-$(PY) -m pipeline.native clean
	rm -rf $(VENV) .stack
