#!/usr/bin/env bash
# Neural phishing, the `cpu` preset experiment (docs/benchmarks.md, section "Neural phishing"; docs/phishing.md):
# 1. SER vs poisons (0 = the no-attack control), duplication, secret length and gap, one factor at a time, 3 seeds;
# 2. poisons {0, 50} x duplication {8, 32}, full grid, 3 seeds;
# 3. the defence check (TinyMem unlearning; forget set = the extracted secrets, or every planted one when
#    nothing was extracted) at 50 poisons, each secret seen 32 times, seed 0;
# 4. poisons {0, 50}, each secret seen 64 times, the attack right after the secrets, 3 seeds.
# The small GPT-2 is pretrained on the KJV into OUT/sweep/pretrained on the first call and reused. One core.
#   bash benchmarks/bench_phishing.sh OUT [extra htsr phish options]
set -uo pipefail
OUT=${1:?usage: bench_phishing.sh OUT [options]}; shift || true
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-python}
COMMON=(--preset cpu "$@" --threads 1 --no-progress)
$PY -m htsr phish sweep "${COMMON[@]}" --poisons 0,10,25,50,100 --duplication 1,2,4 --secret-len 4,6,10 \
  --gap 0,10,40 --seeds 0,1,2 --out-dir "$OUT/sweep" -o "$OUT/summary.csv" --plot "$OUT/ser.png" || exit 1
$PY -m htsr phish sweep "${COMMON[@]}" --set num_poisons=50 --set duplication=32 --design full --poisons 0,50 \
  --duplication 8,32 --seeds 0,1,2 --model "$OUT/sweep/pretrained" --out-dir "$OUT/sweep_dup" \
  -o "$OUT/summary_dup.csv" --plot "$OUT/ser_dup.png" || exit 1
D=(--set num_poisons=50 --set duplication=32 --model "$OUT/sweep/pretrained" --seed 0)
$PY -m htsr phish defend "${COMMON[@]}" "${D[@]}" --out-dir "$OUT/defend0" -o "$OUT/defend0.csv" \
  || $PY -m htsr phish defend "${COMMON[@]}" "${D[@]}" --forget all --out-dir "$OUT/defend0all" -o "$OUT/defend0all.csv"
# 4. (run afterwards) no wash-out: each secret seen 64 times, the attack right after the secrets
$PY -m htsr phish sweep "${COMMON[@]}" --set phase4_iters=0 --set attack_iters=1 --set duplication=64 \
  --set num_poisons=50 --design full --poisons 0,50 --duplication 64 --seeds 0,1,2 --model "$OUT/sweep/pretrained" \
  --out-dir "$OUT/sweep_mem" -o "$OUT/summary_mem.csv"
