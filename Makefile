# mcir: `make demo` and `make test` work on a fresh machine (they create .venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mcir-installed
# torch first, pinned to the CPU build on this machine's disk; pyproject allows torch>=2.4
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m 'not slow'

lint: $(STAMP)
	$(VENV)/bin/ruff check mcir tests benchmarks examples
	$(VENV)/bin/ruff format --check mcir tests benchmarks examples

format: $(STAMP)
	$(VENV)/bin/ruff format mcir tests benchmarks examples
	$(VENV)/bin/ruff check --fix mcir tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
