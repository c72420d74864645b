#!/usr/bin/env bash
# The GPU check, one prepared run of at most 8 minutes on a machine with one CUDA GPU (the device tool's, or
# yours): a training step at depth 1, 2 and all with its MFU against the GPU's measured bf16 ceiling, the
# encoding rate of SciFact documents (whole model, batch 256) and through the state cache, and the regime check
# (plain fine-tuning, SB-MoE and the dense adapter at depths 1, 2 and all on SciFact, one seed each).
# Figures go to $OUT (default results/gpu-check); publish them on a dated results page with the GPU's name.
#
#   bash bench/gpu_check.sh            # SBMOE_DATA_DIR: the BEIR data root (default ../shared/data/beir)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu-check}
mkdir -p "$OUT"
export SBMOE_DATA_DIR=${SBMOE_DATA_DIR:-$(realpath ../shared/data/beir)}
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 150 "$PY" bench/depth_ladder.py --gpu --rounds 3 --steps 5 --docs 5000 --threads 4 | tee "$OUT/depth_ladder.txt"
timeout 300 "$PY" bench/regime_check.py --gpu --experts 3 --top-k 1 --moe-lr 1e-3 --epochs 8 \
    --out "$OUT/regime-check" | tee "$OUT/regime_check.txt"
