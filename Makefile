# The habits a newcomer expects: make demo, make test, make lint, make type, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint type pytest reliability-long bench bench-quick postgres clean

$(VENV)/.runtime: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	@touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install -e '.[dev,bench]'
	@touch $@

## The main job: the offline demo on the embedded SQLite default.
demo: $(VENV)/.runtime
	$(VENV)/bin/agent-history demo

postgres:
	bash scripts/ensure-postgres.sh

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks

type: $(VENV)/.dev
	$(VENV)/bin/mypy src

pytest: $(VENV)/.dev postgres
	$(VENV)/bin/pytest

## The full test suite: ruff, mypy --strict on src/, pytest with real SQLite and PostgreSQL.
test: lint type pytest

## The reliability suite's long variant: 200 SIGKILL trials per backend, 500 examples.
reliability-long: $(VENV)/.dev postgres
	AGENT_HISTORY_RELIABILITY_TRIALS=200 AGENT_HISTORY_RELIABILITY_EXAMPLES=500 \
		$(VENV)/bin/pytest tests/reliability

bench: $(VENV)/.dev postgres
	$(PY) -m benchmarks.run

bench-quick: $(VENV)/.dev postgres
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
