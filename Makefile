# pscl - `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
CONSTRAINTS := requirements/constraints.txt
PIP := $(PYTHON) -m pip install -q -c $(CONSTRAINTS)
export NO_ALBUMENTATIONS_UPDATE := 1

.DEFAULT_GOAL := help
.PHONY: help install run test test-slow test-all bench gpu-check wheels lock clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@echo "installing pscl and its pinned dependencies into $(VENV) (first time: a few minutes)"
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## create .venv (if absent) and install pscl with the tested versions

run: install ## the main job: PSCL-SimCLR pretraining + 1-shot fine-tuning + test on the synthetic data (2 CPU cores)
	$(VENV)/bin/pscl-train experiment=quick method=pscl_simclr

test: install ## the test suite (no slow tests; < 10 minutes on 2 cores)
	$(PYTHON) -m pytest

test-slow: install ## the slow end-to-end tests only
	$(PYTHON) -m pytest -m slow

test-all: install ## every test
	$(PYTHON) -m pytest -m "slow or not slow"

bench: install ## PSCL pretraining step time and peak memory: paper, low-memory, quick and quick with an smp resnet18 (~15 min)
	$(PYTHON) benchmarks/pretrain_step.py --json benchmarks/results.json

# on a machine with an NVIDIA GPU and its own PyTorch: that python, not .venv (override: GPU_PYTHON=...)
GPU_PYTHON ?= python3
gpu-check: ## on a GPU machine: install offline from wheels/, GPU tests, CUDA benchmark, paper runs (<= 8 min)
	$(GPU_PYTHON) benchmarks/gpu_check.py --wheels wheels --out gpu_check

# the Python version of the GPU machine, e.g. make wheels PY=3.12
PY ?= 3.11
wheels: install ## download pscl's dependencies (not torch) as wheels for Python $(PY) into wheels/, for gpu-check offline
	$(PYTHON) benchmarks/gpu_check.py --list-requirements | xargs $(PYTHON) -m pip download -q -d wheels \
	  --no-deps --python-version $(PY)

lock: install ## rewrite the constraints file from the installed versions
	@(echo "# Tested versions (pip constraints), used by make and CI. Regenerate with: make lock"; \
	  $(PYTHON) -m pip freeze --exclude-editable | grep -v '^pscl') > $(CONSTRAINTS)

clean: ## remove caches (keeps .venv and logs/)
	rm -rf .pytest_cache build src/*.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -exec rm -rf {} +
