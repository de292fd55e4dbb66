# `make repro`: set up .venv (first time only) and rebuild the whole pipeline with `dvc repro`.
# `make test`:  set up .venv (first time only) and run the test suite.
# On Windows (no make) and for a CPU-only torch: docs/install.md.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Stage commands call `python` and `dvc`: put the project's environment first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Offline data: use the shared mirror beside the checkout when there is one (override on the command line).
CNNLAB_DATA_MIRROR ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets))
export CNNLAB_DATA_MIRROR

.PHONY: repro test setup
repro: $(STAMP)
	dvc repro

test: $(STAMP)
	$(PYTHON) -m pytest

setup: $(STAMP)

# CPU=1 (`make setup CPU=1`, Linux without a GPU): torch's CPU-only wheels from the PyTorch CPU index and
# none of the CUDA libraries PyPI's Linux wheels bring. Needs that index reachable; the default works everywhere.
CUDA_ONLY := ^(nvidia-(cu|nccl|nv)|cuda-|triton)
ifeq ($(CPU),1)
REQUIREMENTS := $(VENV)/requirements-cpu.txt
UV_TORCH     := --torch-backend cpu
PIP_TORCH    := --extra-index-url https://download.pytorch.org/whl/cpu
else
REQUIREMENTS := requirements.lock
endif

# uv when it is on PATH (faster), pip otherwise; either installs from the index you have configured.
$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
ifeq ($(CPU),1)
	grep -vE '$(CUDA_ONLY)' requirements.lock > $(REQUIREMENTS)
endif
	if command -v uv >/dev/null; then \
	  uv pip install --quiet --python $(PYTHON) $(UV_TORCH) -r $(REQUIREMENTS) && \
	  uv pip install --quiet --python $(PYTHON) --no-deps -e .; \
	else \
	  $(PYTHON) -m pip install --quiet --upgrade pip && \
	  $(PYTHON) -m pip install --quiet $(PIP_TORCH) -r $(REQUIREMENTS) && \
	  $(PYTHON) -m pip install --quiet --no-deps -e .; \
	fi
	touch $@
