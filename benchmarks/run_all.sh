#!/usr/bin/env bash
# Run every benchmark in sequence. Markdown tables go to stdout and to $OUT/<name>.log,
# JSON results to $OUT/<name>.json.
#
#   benchmarks/run_all.sh                 # full sizes (about 30-60 min on 2 idle cores)
#   QUICK=1 benchmarks/run_all.sh         # small sizes, one run each (a few minutes): smoke test
#   OUT=/tmp/bench PYTHON=python benchmarks/run_all.sh
#   BLAS_THREADS=1 benchmarks/run_all.sh  # cap BLAS threads on both sides (see README: loaded machines)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
BT=()
if [ -n "${BLAS_THREADS:-}" ]; then BT=(--blas-threads "$BLAS_THREADS"); fi

run() {  # run NAME SCRIPT ARGS...
    local name=$1; shift
    echo
    echo "=== $name: $* ($(date -Is); $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime))"
    "$PY" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
}

if [ -n "${QUICK:-}" ]; then
    run ks benchmarks/bench_ks.py --sizes 1000 4096 --repeats 5 --ref-repeats 1 --pl-repeats 1
    run minilm benchmarks/bench_minilm.py --repeats 1 --ref-repeats 1 --part a "${BT[@]}"
    run large benchmarks/bench_large.py --repeats 1 --ref-repeats 1 --hidden 1024 --inter 2752 "${BT[@]}"
    run overhead benchmarks/bench_overhead.py --repeats 1 --hidden 1024 --inter 2752 "${BT[@]}"
    run memory benchmarks/bench_memory.py --blocks 2 --shards 2 --hidden 1024 --inter 2752 "${BT[@]}"
else
    run ks benchmarks/bench_ks.py
    run minilm benchmarks/bench_minilm.py "${BT[@]}"
    run large benchmarks/bench_large.py "${BT[@]}"
    run overhead benchmarks/bench_overhead.py "${BT[@]}"
    run memory benchmarks/bench_memory.py "${BT[@]}"
fi
run gpu_check benchmarks/gpu_check.py
echo
echo "done; results in $OUT/"
