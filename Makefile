# omniroute — every entry point a newcomer, ops or CI needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BIN ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export OMNI_DATABASE_URL_PG ?= postgresql+asyncpg://omniroute:omniroute@127.0.0.1:5432/omniroute
export OMNI_KAFKA_BOOTSTRAP_SERVERS_LOCAL ?= 127.0.0.1:9092

.PHONY: help venv run up down status migrate test test-unit test-integration lint format clean \
	faults bench bench-smoke

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml examples/omniroute-signed-webhook/pyproject.toml
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e examples/omniroute-signed-webhook
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with dev tools

run: $(STAMP) ## the whole system in one process (in-process bus, SQLite), demo data seeded
	$(PY) -m devmode

up: ## start local Apache Kafka and PostgreSQL (idempotent)
	bash deploy/infra.sh up

down: ## stop local Apache Kafka and PostgreSQL
	bash deploy/infra.sh down

status: ## health of local Apache Kafka and PostgreSQL
	bash deploy/infra.sh status

migrate: $(STAMP) ## apply database migrations to OMNI_DATABASE_URL (default: local PostgreSQL)
	OMNI_DATABASE_URL=$${OMNI_DATABASE_URL:-$(OMNI_DATABASE_URL_PG)} $(PY) -m shared.db.migrate

test: $(STAMP) up migrate ## set everything up and run unit, integration, e2e and browser tests
	bash deploy/chromium.sh
	cd examples/omniroute-signed-webhook && ../../$(PY) -m pytest -q -p no:cacheprovider
	OMNI_TEST_DATABASE_URL=$(OMNI_DATABASE_URL_PG) \
	OMNI_TEST_KAFKA_BOOTSTRAP_SERVERS=$(OMNI_KAFKA_BOOTSTRAP_SERVERS_LOCAL) \
	$(PY) -m pytest

test-unit: $(STAMP) ## only the tests that need no infrastructure
	$(PY) -m pytest -m "not integration and not e2e"

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP) ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean: ## remove local state (.omni) and caches; `make down` first
	rm -rf .omni .pytest_cache .mypy_cache .ruff_cache

.PHONY: screenshots
screenshots: $(STAMP) ## regenerate docs/images/*.png (console, wall, widget) in Chromium
	bash deploy/chromium.sh
	$(PY) -m devmode.screenshots --out docs/images

# The fault suite stops and restarts its broker and database: it runs on its own
# (ports 19092/19093 and 15432, state in .omni/faults), never on the shared ones.
FAULTS_ENV := OMNI_KAFKA_PORT=19092 OMNI_KAFKA_CONTROLLER_PORT=19093 OMNI_PG_PORT=15432 \
	OMNI_DATA_DIR=$(CURDIR)/.omni/faults OMNI_PG_DATA_DIR=$(CURDIR)/.omni/faults/postgres

faults: $(STAMP) ## fault suite: kills, broker/DB restarts, poison on its own Kafka+PostgreSQL (~8 min)
	$(FAULTS_ENV) bash deploy/infra.sh up
	$(FAULTS_ENV) \
	OMNI_FAULTS_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 \
	OMNI_FAULTS_DATABASE_URL=postgresql+asyncpg://omniroute:omniroute@127.0.0.1:15432/omniroute \
	$(PY) -m pytest -p no:cacheprovider -m faults tests/faults/processes -v --timeout 1800; \
	status=$$?; $(FAULTS_ENV) bash deploy/infra.sh down; exit $$status

bench: $(STAMP) up ## B1-B6 against same-run baselines (~7 min); results in tests/perf/results/
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	OMNI_BENCH_DATABASE_URL=$(OMNI_DATABASE_URL_PG) \
	OMNI_BENCH_KAFKA_BOOTSTRAP_SERVERS=$(OMNI_KAFKA_BOOTSTRAP_SERVERS_LOCAL) \
	$(PY) -m tests.perf.bench

bench-smoke: $(STAMP) up ## the bench with tiny loads: proves the harness counts right (part of `make test`)
	OMNI_TEST_DATABASE_URL=$(OMNI_DATABASE_URL_PG) \
	OMNI_TEST_KAFKA_BOOTSTRAP_SERVERS=$(OMNI_KAFKA_BOOTSTRAP_SERVERS_LOCAL) \
	$(PY) -m pytest -p no:cacheprovider tests/perf/test_bench_smoke.py
