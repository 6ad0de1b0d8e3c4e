# One-command entry points. Each target sets up what it needs on a fresh machine:
# a virtualenv in .venv with torch (the CPU build here), the package (editable) and its extras,
# and, for training, the Fashion-MNIST files from Debian's dataset-fashion-mnist package.
VENV        ?= .venv
PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
# extra pip options for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.tenfold-installed

.PHONY: setup train reproduce test test-slow bench lint data clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned; the extras' own `torch>=2.2` then install nothing more. The CPU
	# build where pip finds it (this project's machines keep its wheel on disk); PyPI's
	# default Linux wheel is the CUDA one: see TORCH_PIP_ARGS.
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

data:
	bash scripts/ensure-data.sh

## The main job: 5 workers train the paper's network on Fashion-MNIST with compressed weight averaging.
## An earlier run is never replaced: `make train` writes runs/quickstart (and refuses, saying how
## to continue or replace it, if that holds a run: ARGS=--overwrite replaces it); with other ARGS
## the run goes to a fresh runs/train-<date>-<time> unless ARGS has --out or --resume.
TRAIN_OUT = $(if $(filter-out --overwrite --quiet,$(ARGS)),,--out runs/quickstart)
train: setup data
	$(VENV)/bin/tenfold train $(TRAIN_OUT) $(ARGS)

## The paper's reproduction (paper/, not installed): e.g. ARGS="--profile quick --out DIR";
## --profile full|long|beyond, --report-only, --jobs N, --estimate (python -m paper --help).
reproduce: setup data
	$(PY) -m paper $(ARGS)

## The test suite, as CI runs it: lint and types over src/ paper/ tests/ benchmarks/ examples/, then every test not marked slow.
test: setup data
	$(VENV)/bin/ruff check src paper tests benchmarks examples
	$(VENV)/bin/ruff format --check src paper tests benchmarks examples
	$(VENV)/bin/mypy
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-slow: setup
	$(PY) -m pytest -m slow -q $(ARGS)

## The codec benchmark (benchmarks/codec.py): a short table; ARGS="--json" for every figure,
## "--out FILE" writes them to FILE; e.g. ARGS="--quick" or ARGS="--threads 1 2".
bench: setup
	$(PY) benchmarks/codec.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check --fix src paper tests benchmarks examples
	$(VENV)/bin/ruff format src paper tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
