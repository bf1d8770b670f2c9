# normlab: `make demo` runs the main job, `make test` the whole test suite.
# Both create .venv if missing. torch==2.13.0 is installed first unless a torch is already
# importable there, so that pip never resolves an unpinned torch (and its CUDA packages).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.normlab-installed
DEMO_ARGS ?=
# timm for the tests, without its dependencies (its torchvision requirement would pull a torch)
TIMM_VERSION ?= 1.0.31

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "torch==2.13.0"
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps "timm==$(TIMM_VERSION)"
	@touch $@

demo: install
	$(BIN)/normlab demo $(DEMO_ARGS)

test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/pn_speed.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis .ruff_cache
