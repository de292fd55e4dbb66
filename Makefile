# `make repro`: set up .venv (first time only) and rebuild the whole pipeline with `dvc repro`.
# `make test`:  set up .venv (first time only) and run the test suite.
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

$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.lock
	$(PYTHON) -m pip install --quiet --no-deps -e .
	touch $@
