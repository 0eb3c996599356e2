# `make test` and `make demo` work on a fresh machine with only Python 3.11+ and PyPI.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install test demo bench describe clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The suite mostly waits on brokers: xdist processes, each with a dev broker of its own (tests/conftest.py).
# `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 4
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

demo: install
	$(BIN)/python scripts/demo.py

# Every benchmark, one table against the targets (10-20 min on 2 cores); results in benchmarks/results/.
# `make bench BENCH_ARGS=--quick` for a smoke run, BENCH_ARGS="--bootstrap-servers host:9092" for a cluster.
BENCH_ARGS ?=
bench: install
	$(BIN)/python benchmarks/suite.py $(BENCH_ARGS)

describe: install
	$(BIN)/streamproc describe topologies/page_views.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .demo-state
