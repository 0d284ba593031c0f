#!/usr/bin/env bash
# W5 side by side in one session: PyTorch, steerlab f32 and steerlab on the Q4_1 base,
# interleaved (the order alternates per round), each process timing 5 steps after a
# warm-up step (bench/w5_train_{torch,steerlab}.py, spec in bench/w5_spec.py). Prints one
# JSON line per process, prefixed with the round and the tool.
#
#   TORCH_PY=.bench-venv/bin/python STEERLAB_PY=.bench-venv/bin/python \
#   HF_DIR=<transformers copy of the GGUF weights> ROUNDS=3 bash bench/w5_side_by_side.sh
#
# HF_DIR is what run_bench.py's hf-cache task writes (the GGUF dequantized by
# transformers and saved as safetensors); steerlab reads the GGUF itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${TORCH_PY:?the Python with torch + transformers}"
: "${STEERLAB_PY:?the Python with steerlab (a --release build)}"
: "${HF_DIR:?the transformers checkpoint of the same weights}"
ROUNDS="${ROUNDS:-3}"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order="torch f32 auto"; else order="auto f32 torch"; fi
    for t in $order; do
        if [[ $t == torch ]]; then
            line=$("$TORCH_PY" bench/w5_train_torch.py --hf-dir "$HF_DIR" --steps 5 | tail -1)
        else
            line=$(RAYON_NUM_THREADS=2 "$STEERLAB_PY" bench/w5_train_steerlab.py --dtype "$t" --steps 5 | tail -1)
        fi
        echo "R$r $t $line"
    done
done
