#!/usr/bin/env bash
# One prepared GPU run for the AlphaPruning benchmarks (issue 5): train the KJV LLaMA, the perplexity grid,
# per-layer pruning cost. Writes everything under $OUT (default /tmp/gpu_pruning). Usage (repo root):
#   OUT=/tmp/out bash benchmarks/gpu_pruning.sh
set -u
OUT=${OUT:-/tmp/gpu_pruning}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
nvidia-smi -L 2>&1 | tee "$OUT/device.txt"
python -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$OUT/device.txt"
python benchmarks/train_kjv_lm.py --out "$OUT/kjv-llama" --steps 3000 --hidden 384 --layers 6 --seqlen 256 \
  --batch 64 --lr 2e-3 --device cuda --log-every 250 --threads 8 --time-limit "${TRAIN_LIMIT:-200}" 2>&1 | tee "$OUT/train.log"
python benchmarks/bench_pruning_cost.py --sizes 1024,4096 --rows 16384 --device cuda --json "$OUT/cost_cuda.json" \
  2>&1 | tee "$OUT/cost_cuda.log"
python benchmarks/bench_pruning_lm.py --model "$OUT/kjv-llama" --device cuda --json "$OUT/grid.json" \
  2>&1 | tee "$OUT/grid.log"
