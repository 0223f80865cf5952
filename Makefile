# Mosaic: the README's commands. Every target builds .venv from uv.lock when it is missing or stale,
# so a fresh machine needs nothing but python3 (uv itself is bootstrapped into .tools/).
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
STAMP := $(VENV)/.synced
PY := $(VENV)/bin/python
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help run test test-fast lint format typecheck bench down status clean lock docs service manifests

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

# Re-sync whenever the lock file, a package manifest or this file is newer than the last sync.
# Bytecode is compiled here, the installed packages' and the workspace's: where
# PYTHONDONTWRITEBYTECODE is set (many containers), Python never caches it itself, and every
# process would compile every module it imports again (a service instance: 2.3 s instead of 1.1).
$(STAMP): uv.lock pyproject.toml libs/kit/pyproject.toml services/*/pyproject.toml gateway/pyproject.toml devstack/pyproject.toml Makefile | $(UV)
	$(UV) sync --frozen --all-packages --compile-bytecode
	$(PY) -m compileall -q -j0 libs/kit/src services/*/src gateway/src devstack/src bench
	@touch $(STAMP)

run: $(STAMP) ## start the whole system (embedded PostgreSQL + NATS, migrations, seed, replicas)
	$(VENV)/bin/mosaic up $(ARGS)

down: $(STAMP) ## stop a system started by `make run` in the background
	$(VENV)/bin/mosaic down

status: $(STAMP) ## show what `make run` started
	$(VENV)/bin/mosaic status

test: $(STAMP) ## run the whole test suite (starts its own PostgreSQL and NATS)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP) ## ruff (lint + format check), mypy --strict and the import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

service: $(STAMP) ## generate a new service: make service NAME=reco (docs/new-service.md)
	$(VENV)/bin/mosaic new service $(NAME)

lock: | $(UV) ## update uv.lock after editing a package manifest (`mosaic new service` runs it)
	$(UV) lock --quiet

docs: $(STAMP) ## regenerate docs/configuration.md from the settings classes
	$(PY) tools/configdoc.py > docs/configuration.md.tmp
	mv docs/configuration.md.tmp docs/configuration.md

manifests: $(STAMP) ## render the Kubernetes manifests into deploy/k8s/rendered/{dev,prod} (docs/kubernetes.md)
	$(VENV)/bin/mosaic manifests --overlay dev --out deploy/k8s/rendered/dev
	$(VENV)/bin/mosaic manifests --overlay prod --out deploy/k8s/rendered/prod

bench: $(STAMP) ## run the benchmarks, print tables, write bench/results/*.json
	$(PY) bench/run.py $(ARGS)

clean: ## remove the environment and local data
	rm -rf $(VENV) .tools .mosaic .pytest_cache .mypy_cache .ruff_cache
