# One-command set-up. TORCH_SPEC selects the torch build, e.g.
#   make test TORCH_SPEC="torch==2.5.1" (GPU users: any CUDA build of torch>=2.1).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.8.0
EXTRAS ?= test,dev
BIN := $(VENV)/bin

.PHONY: setup test demo lint bench clean

# Optional installs (the tests skip what they lack): commot's data files
# (CellChatDB, CellPhoneDB) for the prior loader's tests on the real tables
# (commot's code and dependencies are never used), and Triton, whose CPU
# interpreter checks the GPU path's Triton kernels. Then the C++ CPU kernels are
# compiled into torch's extension cache (about 20 s; without a compiler the
# package says so and uses its pure-PyTorch code).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	-$(BIN)/pip install --quiet --no-deps "commot==0.0.3"
	-$(BIN)/pip install --quiet "$(TRITON_SPEC)"
	$(BIN)/python -c "from torch_staged.nn._cpp import build; build()"
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

bench: $(VENV)/.installed
	mkdir -p results
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/conv.py --cells 1000 10000 100000 --runs 3 --json results/conv_cpu.json
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/ode.py --cells 1000 10000 --threads 1 --json results/ode_cpu.json
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/scaling.py --cells 1000 10000 100000 1000000 --max-whole 100000 \
		--max-build 100000 --extrapolate --runs 1 --threads 1 --json results/scaling_cpu.json
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/train.py --cells 10000 --tile-size 50 --threads 1 --json results/train_cpu.json
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/research_code.py --cells 50 100 200 400 --runs 5 --warmup 2 \
		--threads 1 --json results/research_cpu.json
