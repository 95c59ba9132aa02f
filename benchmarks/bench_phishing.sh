#!/usr/bin/env bash
# Neural phishing, the `cpu` preset experiment (docs/benchmarks.md, section "Neural phishing"):
# SER vs poisons (0 = the no-attack control), duplication, secret length and gap, 3 seeds, one core;
# then the defence check (TinyMem unlearning of the extracted secrets) at 100 poisons, 3 seeds.
# The small GPT-2 is pretrained on the KJV into OUT/sweep/pretrained on the first call and reused.
#   bash benchmarks/bench_phishing.sh OUT [extra htsr phish options, e.g. --set lr=3e-4]
set -euo pipefail
OUT=${1:?usage: bench_phishing.sh OUT [options]}; shift || true
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-python}
$PY -m htsr phish sweep --preset cpu "$@" --poisons 0,10,25,50,100 --duplication 1,2,4 --secret-len 4,6,10 \
  --gap 0,10,40 --seeds 0,1,2 --out-dir "$OUT/sweep" --threads 1 --no-progress \
  -o "$OUT/summary.csv" --plot "$OUT/ser.png"
for s in 0 1 2; do
  $PY -m htsr phish defend --preset cpu "$@" --set num_poisons=100 --model "$OUT/sweep/pretrained" --seed $s \
    --threads 1 --no-progress --out-dir "$OUT/defend$s" -o "$OUT/defend$s.csv" \
  || $PY -m htsr phish defend --preset cpu "$@" --set num_poisons=100 --model "$OUT/sweep/pretrained" --seed $s \
    --forget all --threads 1 --no-progress --out-dir "$OUT/defend${s}all" -o "$OUT/defend${s}all.csv"
done
