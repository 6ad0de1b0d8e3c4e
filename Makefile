# One-command entry points. Each target sets up what it needs on a fresh machine:
# a virtualenv in .venv with the CPU build of torch, the package (editable) and its extras,
# and, for training, the Fashion-MNIST files from Debian's dataset-fashion-mnist package.
VENV        ?= .venv
PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.tenfold-installed

.PHONY: setup train test test-slow bench lint data clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the small CPU build; the package's own `torch>=2.2` then installs nothing more.
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

data:
	bash scripts/ensure-data.sh

## The main job: 5 workers train the paper's network on Fashion-MNIST with compressed weight averaging.
train: setup data
	$(VENV)/bin/tenfold train --out runs/quickstart --overwrite $(ARGS)

## The test suite, as CI runs it: lint and types over src/ tests/ benchmarks/, then every test not marked slow.
test: setup data
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-slow: setup
	$(PY) -m pytest -m slow -q $(ARGS)

bench: setup
	$(VENV)/bin/tenfold bench $(ARGS)

lint: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
