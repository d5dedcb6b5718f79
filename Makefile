# Two entry points for a fresh machine with only Python 3 and pip:
#   make demo   create .venv, install numbadam, run the main job
#   make test   create .venv, install numbadam[test], run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test test-cpu test-cuda-sim clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[test,cuda]"
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/python -m numbadam.examples.logistic

test: test-cpu test-cuda-sim

test-cpu: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not cuda" tests

# The simulator flag must be set before numba is imported: a separate process.
test-cuda-sim: $(VENV)/.installed-test
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q -m cuda tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
