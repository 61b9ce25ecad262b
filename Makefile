# The two commands a new user types: `make demo` and `make test`.
# Both create .venv when missing; everything else is set up from here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test demo lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,dev]'
	touch $(STAMP)

test: $(STAMP) lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	VENV=$(VENV) infra/local/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/bench_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
