# Two commands on a fresh machine: `make demo` and `make test`.
# The venv gets the CPU torch 2.13.0 first, so no dependency can pull a CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

.PHONY: demo test lint format clean gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/podkit demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check podkit tests studies
	$(BIN)/ruff format --check podkit tests studies
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --no-loadscope-reorder --durations=12

# on a CUDA machine, with its own CUDA torch on PATH (not the CPU venv): studies/gpu_check.sh
gpu-check:
	bash studies/gpu_check.sh

lint: $(STAMP)
	$(BIN)/ruff check --fix podkit tests studies
	$(BIN)/ruff format podkit tests studies

clean:
	rm -rf $(VENV) runs
