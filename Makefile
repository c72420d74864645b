# Quick start: `make sweep` (set up + run the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before the project so that its `torch>=2.4` is already satisfied: on a CPU machine this
# avoids pip pulling a multi-GB CUDA build. For a GPU machine: make TORCH_SPEC='torch==2.13.0' (CUDA wheel
# from PyPI) or any build from https://pytorch.org.
TORCH_SPEC ?= torch==2.13.0
# Data root: $SBMOE_DATA_DIR if set; else the project's development data beside the checkout, when present;
# else datasets are downloaded from the BEIR mirror into ~/.cache/sbmoe/beir.
ifeq ($(SBMOE_DATA_DIR),)
  ifneq ($(wildcard ../shared/data/beir/scifact/corpus.jsonl),)
    export SBMOE_DATA_DIR := $(abspath ../shared/data/beir)
  endif
endif

.PHONY: setup sweep test test-fast lint bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# The main job: the default experts study (the preset experts_sweep) on a local Ray with the embedded
# MLflow store (sqlite:///mlflow.db). Running it again resumes an interrupted study of the same name.
sweep: setup
	$(VENV)/bin/sbmoe study $(SWEEP_ARGS)

# The full suite (what CI runs), spread over pytest-xdist workers, one per core: the suite is bound by CPU
# (Ray's processes, Train's helper actors), and a third worker on 2 cores only slowed every study down.
# --dist loadscope as tests/conftest.py schedules it: the modules with a costly module fixture (a local Ray)
# each go whole to one worker, every other test alone, handed out as workers free up, the longest first
# (--no-loadscope-reorder keeps that order). docs/contributing.md, "Tests".
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# The edit loop: everything but whole studies, Ray Train runs and clusters (every module still reached).
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not multinode and not gpu"

lint: setup
	$(VENV)/bin/ruff check sbmoe_ray tests bench docs studies

# The documentation site (mkdocs-material), built into site/ in strict mode: a warning, a broken internal link or
# anchor fails the build (mkdocs.yml, `validation`). Generated pages: the config and CLI references, the API.
$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict

bench: setup
	$(PY) bench/encode_throughput.py

clean:
	rm -rf $(VENV) results site
