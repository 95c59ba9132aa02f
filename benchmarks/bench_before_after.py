"""Round-2 code changes, before vs after, side by side in one process (runs alternate; library default threads):

(1) MiniLM ``htsr.analyze`` (``weightwatcher`` and default presets) with the CPU eigensolve of ``--eigen-rev``
    (scipy syrk + numpy eigvalsh for small Grams) vs the current one (numpy for both);
(2) the SparseGPT prune step at d = 1024 (16,384 calibration vectors, 50 %) with ``--pruners-rev``'s sweep vs the
    current one, and whether their masks are equal.

The old modules are read from git (``git show REV:path``), so run it from the repository.

    python benchmarks/bench_before_after.py [--eigen-rev a9f6b43] [--pruners-rev c92b089^] [--repeats 7]
"""
import argparse
import importlib.util
import os
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--eigen-rev", default="a9f6b43")
ap.add_argument("--pruners-rev", default="c92b089^")
ap.add_argument("--repeats", type=int, default=7)
args = ap.parse_args()


def old_module(rev: str, path: str, name: str):
    """Module ``path`` as it was at git revision ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
    f = Path(tempfile.mkdtemp()) / f"{name}.py"
    f.write_text(src)
    spec = importlib.util.spec_from_file_location(name, f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod



import torch  # noqa: E402

import bench_minilm as B  # noqa: E402
import htsr  # noqa: E402
import htsr.spectra.eigen as E  # noqa: E402
from htsr.pruning.pruners import LayerStats, sparsegpt_prune  # noqa: E402

old = old_module(args.pruners_rev, "src/htsr/pruning/pruners.py", "pruners_old")
eold = old_module(args.eigen_rev, "src/htsr/spectra/eigen.py", "eigen_old")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


print("load", os.getloadavg())
model = B.load_model()
B.warmup()
new_fn = E._cpu_eigvalsh
res: dict = {}
for _ in range(args.repeats):
    for preset in ("weightwatcher", "htsr"):
        for name, fn in (("old", eold._cpu_eigvalsh), ("new", new_fn)):
            E._cpu_eigvalsh = fn
            res.setdefault((preset, name), []).append(timed(lambda p=preset: htsr.analyze(model, preset=p)))
E._cpu_eigvalsh = new_fn
for (preset, name), v in res.items():
    print(f"MiniLM {preset} {name}: median {st.median(v):.3f} s, runs {[round(x, 3) for x in sorted(v)]}")
for p in ("weightwatcher", "htsr"):
    print(f"MiniLM {p}: old / new = {st.median(res[(p, 'old')]) / st.median(res[(p, 'new')]):.2f}x")

torch.manual_seed(0)
d = 1024
W = torch.randn(d, d) / d ** 0.5
X = torch.randn(16384, d)
stats = LayerStats(d, hessian=True)
for i in range(0, 16384, 128):
    stats.add_batch(X[i:i + 128].unsqueeze(0))
prune = {"old": old.sparsegpt_prune, "new": sparsegpt_prune}
for f in prune.values():  # first-call costs outside the timings
    f(W.clone(), 0.5, stats.H)
r: dict = {"old": [], "new": []}
for _ in range(args.repeats + 2):
    for name, f in prune.items():
        r[name].append(timed(lambda f=f: f(W.clone(), 0.5, stats.H)))
same = bool(torch.equal(prune["old"](W.clone(), 0.5, stats.H), prune["new"](W.clone(), 0.5, stats.H)))
o, n = st.median(r["old"]), st.median(r["new"])
print(f"SparseGPT d=1024 prune step: old {o:.4f} s, new {n:.4f} s, old / new = {o / n:.2f}x; masks equal: {same}")
print("load", os.getloadavg())
