# Two entry points for a fresh machine with only Python 3 and pip:
#   make demo   create .venv, install numbadam[examples], run the main job
#   make test   create .venv, install numbadam with its test, docs, bench, mpi and
#               cuda extras, run the whole suite (docs, asv smoke run, CPU tests and
#               doctests, CUDA tests under the simulator)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test test-docs test-asv test-cpu test-cuda-sim clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[examples]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[test,cuda,mpi,examples,docs,bench]"
	touch $@

# The main job (docs/demo.md): an embedding recommender and an MLP trained with
# numbadam.Adam, curves in demo-output/demo.png, checkpoints in demo-output/ckpt.
# More flags: make demo DEMO_ARGS="--resume" (see .venv/bin/numbadam demo --help).
DEMO_ARGS ?=
demo: $(VENV)/.installed-demo
	$(BIN)/numbadam demo --plot demo-output/demo.png --checkpoint-dir demo-output/ckpt $(DEMO_ARGS)

# The whole suite: docs (-W), asv smoke run, CPU tests + doctests, CUDA tests
# under the simulator (a separate process: the flag is read when numba starts).
test: test-docs test-asv test-cpu test-cuda-sim

test-docs: $(VENV)/.installed-test
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test-asv: $(VENV)/.installed-test
	cd asv_bench && $(abspath $(BIN))/asv machine --yes > /dev/null \
		&& $(abspath $(BIN))/asv run --python=same --quick --show-stderr

# numbadam's CUDA modules have no doctests and need numba-cuda's simulator or a GPU.
test-cpu: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not cuda" --doctest-modules \
		--ignore-glob='numbadam/_backend_cuda*.py' --ignore-glob='numbadam/kernels/*cuda*.py' \
		--ignore=tests/mpi_scripts \
		--doctest-glob="*.md" tests numbadam docs/index.md docs/migrating.md \
		docs/semantics.md docs/guide.md docs/state-on-disk.md

# The simulator flag must be set before numba is imported: a separate process.
test-cuda-sim: $(VENV)/.installed-test
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q -m cuda tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# Documentation: HTML in docs/_build/html, warnings are errors (docs/conf.py).
.PHONY: docs bench
$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

# Benchmarks: one quick asv pass in .venv (a smoke test; docs/performance.md).
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.installed-bench
	cd asv_bench && $(abspath $(BIN))/asv machine --yes > /dev/null \
		&& $(abspath $(BIN))/asv run --python=same --quick --show-stderr

# Lint and format check (CONTRIBUTING.md: ruff, 88 columns). Not part of `make test`:
# a new ruff release may add checks, and CI should fail on numbadam, not on that.
.PHONY: lint
$(VENV)/.installed-lint: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[lint]"
	touch $@

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
