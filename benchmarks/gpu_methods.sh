#!/usr/bin/env bash
# One prepared GPU run for the landscape / training / TempBalance / TinyMem code on CUDA: the CUDA-vs-CPU
# agreement tests, the Hessian benchmark against PyHessian on the GPU, and the 4-layer TinyMem backdoor
# comparison with --device cuda. Writes logs under $OUT (default /tmp/gpu_methods). Usage (repo root; PyHessian
# 0.1 importable, e.g. copied into .gpu_carry/):
#   OUT=/tmp/out bash benchmarks/gpu_methods.sh
set -u
OUT=${OUT:-/tmp/gpu_methods}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/.gpu_carry HF_HUB_OFFLINE=1
{ nvidia-smi -L; python3 -c "import torch, transformers, sklearn; print(torch.__version__, torch.version.cuda,
  transformers.__version__, sklearn.__version__)"; } 2>&1 | tee "$OUT/device.txt"
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_methods.py tests/test_pruning_gpu.py \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -25
for w in 16 64; do
  timeout 150 python3 benchmarks/bench_hessian.py --device cuda --repeats 5 --width $w > "$OUT/hessian_w$w.log" 2>&1
  tail -22 "$OUT/hessian_w$w.log"
done
timeout "${TINYMEM_LIMIT:-240}" python3 -c "import sys; from htsr.cli.main import main; sys.exit(main())" tinymem \
  compare --preset cpu --artifact backdoor --layers 4 --device cuda --out "$OUT/tm4_backdoor_cuda" \
  > "$OUT/tinymem_cuda.log" 2>&1
tail -25 "$OUT/tinymem_cuda.log"
cp "$OUT"/tm4_backdoor_cuda/*.csv "$OUT"/ 2>/dev/null
rm -rf "$OUT/tm4_backdoor_cuda"
ls -la "$OUT"
