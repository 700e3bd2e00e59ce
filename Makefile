# The habits a newcomer expects: make demo, make test, make lint, make type, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The dependency versions the suite last passed with ('make constraints' refreshes them).
CONSTRAINTS ?= constraints.txt

.PHONY: demo test lint type pytest reliability-long bench bench-quick postgres constraints clean

$(VENV)/.runtime: pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(CONSTRAINTS) -e .
	@touch $@

$(VENV)/.dev: pyproject.toml $(CONSTRAINTS) $(VENV)/.runtime
	$(PIP) install -c $(CONSTRAINTS) -e '.[dev,bench]'
	@touch $@

## Refresh constraints.txt: the newest releases pyproject.toml allows, in a scratch venv
## (then run 'make test' before committing it).
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip --disable-pip-version-check -q install -e '.[dev,bench]'
	{ sed -n '1,3p' constraints.txt; \
	  .venv-constraints/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints

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
	rm -rf $(VENV) .venv-constraints .pytest_cache .mypy_cache .ruff_cache
