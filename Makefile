# firefly_exp — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.firefly-installed
ARGS ?=
REPORT ?=

.DEFAULT_GOAL := help
.PHONY: help install servers servers-full run smoke full test test-all bench report clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (pinned)

servers: install ## install the default experiment's MCP servers (own venv per PyPI server, one npm prefix)
	$(PY) -m firefly_exp.install --config default

servers-full: install ## install every server of the full catalog (31 servers, 1,236 tools; minutes)
	$(PY) -m firefly_exp.install --config full

run: servers ## install, then run the default experiment end to end (ARGS="sampler=uniform" to override)
	$(PY) -m firefly_exp $(ARGS)

smoke: servers ## install, then run the seconds-long smoke experiment
	$(PY) -m firefly_exp +experiment=smoke $(ARGS)

full: servers-full ## install the full catalog, then run the full experiment (≥5,144 verified tasks)
	$(PY) -m firefly_exp +experiment=full $(ARGS)

test: servers ## install, then run the tests (slow ones excluded)
	$(PY) -m pytest -q $(ARGS)

test-all: servers ## the tests, slow ones included
	$(PY) -m pytest -q -m "" $(ARGS)

bench: servers ## run every benchmark in bench/ (results in outputs/bench/*.json)
	@set -e; for f in bench/*.py; do [ "$$(basename $$f)" = __init__.py ] && continue; \
	  m=bench.$$(basename $$f .py); echo "== $$m"; $(PY) -m $$m $(ARGS); done

report: install ## the comparison report of the latest sweep (REPORT=<sweep folder | experiment name> for another)
	$(PY) -m firefly_exp.report $(REPORT)

clean: ## remove run outputs (keeps installs and the MLflow store)
	rm -rf outputs/runs outputs/multirun outputs/store outputs/latest
