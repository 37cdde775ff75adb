# The two commands a new machine needs (see README):  make demo  |  make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow install triton browser lint clean

install: $(STAMP)

# torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache where present.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[train,export,serve,bulk,dev]"
	touch $@

# A real Triton server (CPU, python backend) for the integration tests; its own venv with numpy 1.26.
triton: .triton-venv/.installed
.triton-venv/.installed: scripts/setup_triton.sh
	bash scripts/setup_triton.sh
	touch $@

# Debian's chromium for the page tests (playwright drives it; no browser download).
browser:
	bash scripts/setup_browser.sh

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP) triton browser
	$(PY) -m pytest -q

test-slow: $(STAMP) triton browser
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .triton-venv runs model_repository/*/ model_repository_cpu
