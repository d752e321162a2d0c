# One-command set-up. TORCH_SPEC selects the torch build, e.g.
#   make test TORCH_SPEC="torch==2.5.1" (GPU users: any CUDA build of torch>=2.1).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,dev
BIN := $(VENV)/bin

.PHONY: setup test demo lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q torch_staged tests

demo: $(VENV)/.installed
	$(BIN)/torch-staged demo --out runs/demo

lint: $(VENV)/.installed
	$(BIN)/ruff check torch_staged tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info runs
