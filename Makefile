# scoreda — two commands on a fresh machine: `make run` (quickstart) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Containers that bring their own (GPU) torch: make install CONSTRAINTS=<pins without torch> TORCH=
#   VENV_FLAGS=--system-site-packages EXTRAS=dev (containers/). The defaults are this machine's.
CONSTRAINTS ?= $(CURDIR)/constraints.txt
TORCH ?= torch==2.13.0
EXTRAS ?= local-mpi,dev
VENV_FLAGS ?=
# pip 23 reads PIP_CONSTRAINT, pip 26 reads PIP_BUILD_CONSTRAINT inside build environments.
export PIP_CONSTRAINT := $(CONSTRAINTS)
export PIP_BUILD_CONSTRAINT := $(CONSTRAINTS)
export DS_ACCELERATOR ?= cpu
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.PHONY: install run test lint bench clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH) numpy==1.26.4
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@# DeepSpeed JIT-compiles its CPU shared-memory comm op on first use; build it once here.
	$(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load(verbose=False)"
	@# The compiled CPU kernels (filter.kernel=fused) into this machine's cache, so no run pays for it.
	@$(PY) -m scoreda.kernels || echo "no C compiler: filter.kernel=fused will not run here (kernel=torch does)"
	@touch $@

run: $(STAMP)
	$(PY) workflows/cycle.py experiment=quickstart

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff check src workflows tests scripts

bench: $(STAMP)
	$(PY) scripts/bench_filters.py
	$(PY) scripts/bench_vit.py

clean-runs:
	rm -rf runs/ outputs/ multirun/
