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

# uv installs what pip would (the same pins, the same packages) in about half the time: it
# fetches and unpacks the wheels (torch's CUDA libraries are GBs) in parallel. System CAs, as
# pip is configured to use here. --compile-bytecode: where PYTHONDONTWRITEBYTECODE=1 is set (as
# on this project's machines) Python never caches bytecode, so every job process, Ray worker
# and actor compiled torch, Ray and pandas from source again: importing them took 6.6 s instead
# of 2.3 s, and a test suite starts hundreds of such processes.
UV_VERSION := 0.13.9
export UV_SYSTEM_CERTS ?= 1

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -c constraints.txt -e '.[cpu,dev]'
	touch $(STAMP)

# Test files run on PYTEST_WORKERS processes (pytest-xdist), each with its own S3 server,
# Ray clusters and temp dir; a file's tests stay on one worker (its module fixtures once).
PYTEST_WORKERS ?= 2

test: $(STAMP) lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

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
