"""Hessian benchmark: htsr.landscape vs PyHessian 0.1 on the same CPU, model, data and tolerance, in one process.

    python benchmarks/bench_hessian.py [--repeats 5] [--threads 1] [--width 16] [--device cuda]

Model: a CNN with BatchNorm (Conv 1→W, BN, ReLU, Conv W→W, BN, ReLU, MaxPool, Linear) trained for 3 epochs on
scikit-learn digits; Hessian of the mean cross-entropy on one batch of 200 training images in eval mode (the
MD-tree protocol), float32 as PyHessian is normally used. References: the exact trace (sum of eᵢᵀHeᵢ over all
unit vectors, float64 copy of the model) and the top eigenvalue (Lanczos to 1e-10 in float64).

For each seed: PyHessian ``hessian(...).eigenvalues()`` and ``.trace()`` (maxIter 100, tol 1e-3, global RNG seeded)
vs htsr ``top_eigenvalues`` (Lanczos) and ``hessian_trace`` (Hutchinson with PyHessian's rule, and Hutch++ with 30
products), each including its own set-up (PyHessian builds the gradient graph in its constructor). Memory: peak
RSS increase of a child process that runs one library's eigenvalue + trace. Skips with a message when
``pyhessian`` is not installed (``pip install --no-deps pyhessian==0.1``). ``--device cuda`` runs both
libraries (and the references) on the GPU; the peak-RSS comparison is then skipped (GPU memory is reported
as the peak allocated by each library's eigenvalue + trace instead).

``--residual``: the top eigenvalue at *equal, residual-checked accuracy* instead. For each target tau, htsr's
Lanczos and power iteration stop on the residual test ``||Hv - theta v|| <= tau |theta|``; PyHessian's
``eigenvalues(tol=tau)`` stops on its own rule (relative change), and the residual of the pair it returns is then
measured (pass rate). PyHessian's products are counted through its ``hessian_vector_product``, and at each one
the residual of the current iterate is measured: the first product at which it passes is the fewest products
PyHessian's power iteration needs for that accuracy (an oracle stopping rule, in its favour); PyHessian is then
timed running exactly that many products. Cases: the digits CNN above and three tanh MLPs (8-12-3, 147
parameters, seeded Gaussian data) whose top two eigenvalues are within 1-3.3 %.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn


def build(width: int, seed: int = 0, train_epochs: int = 3):
    from sklearn.datasets import load_digits

    from htsr.training import train

    d = load_digits()
    x = torch.tensor(d.images[:, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3),
                              nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(width * 4, 10))
    ds = torch.utils.data.TensorDataset(x[:1500], y[:1500])
    dl = torch.utils.data.DataLoader(ds, batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(seed))
    if train_epochs:
        train(model, dl, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=train_epochs,
              progress=False)
    return model.eval(), (x[:200], y[:200])


def references(model, batch):
    import copy

    from htsr.landscape.hessian import top_eigenvalues
    from htsr.landscape.objective import Objective

    m64 = copy.deepcopy(model).double()
    b64 = (batch[0].double(), batch[1])
    obj = Objective(m64, b64)
    lam = float(top_eigenvalues(obj, 1, tol=1e-10, max_iter=300).eigenvalues[0])
    tr = 0.0
    eye_block = 256
    for i in range(0, obj.dim, eye_block):
        k = min(eye_block, obj.dim - i)
        E = torch.zeros(k, obj.dim, dtype=torch.float64, device=obj.device)
        E[torch.arange(k), torch.arange(i, i + k)] = 1.0
        tr += float((obj.hvp(E) * E).sum())
    return lam, tr, obj.dim


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def timed(fn):
    t = time.perf_counter()
    out = fn()  # every case returns Python floats: the GPU work is finished when it returns
    return time.perf_counter() - t, out


def gpu_memory(model, batch) -> None:
    """Peak GPU memory allocated by each library's eigenvalue + trace (beyond the model and the batch)."""
    print("\npeak GPU memory allocated during eigenvalue + trace (beyond model and batch):")
    for lib, fn, whats in (("pyhessian", run_pyhessian, ("eig", "trace")),
                           ("htsr", run_htsr, ("eig", "hutchinson", "hutch++"))):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for what in whats:
            fn(model, batch, 0, what)
        torch.cuda.synchronize()
        print(f"  {lib:10s} +{(torch.cuda.max_memory_allocated() - base) / 2**20:.1f} MiB")


def run_pyhessian(model, batch, seed: int, what: str):
    from pyhessian import hessian

    torch.manual_seed(seed)  # PyHessian draws its probes from the global RNG
    h = hessian(model, nn.CrossEntropyLoss(), data=batch, cuda=batch[0].is_cuda)
    if what == "eig":
        vals, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        return float(vals[0]), None
    samples = h.trace(maxIter=100, tol=1e-3)
    model.zero_grad(set_to_none=True)
    return float(np.mean(samples)), len(samples)


def run_htsr(model, batch, seed: int, what: str):
    from htsr.landscape.hessian import hessian_trace, top_eigenvalues
    from htsr.landscape.objective import Objective

    obj = Objective(model, batch)
    if what == "eig":
        r = top_eigenvalues(obj, 1, seed=seed)
        return float(r.eigenvalues[0]), r.n_matvecs
    if what == "hutchinson":
        r = hessian_trace(obj, seed=seed)
    else:
        budget = int(what.split("@")[1]) if "@" in what else 30
        r = hessian_trace(obj, method="hutch++", num_matvecs=budget, seed=seed)
    return float(r.trace), r.n_matvecs


def hvp_cost(model, batch, reps: int = 20) -> dict[str, float]:
    from htsr.landscape.objective import Objective

    x, y = batch

    def grad():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    obj = Objective(model, batch)
    fresh = Objective(model, batch, cache_graph=False)
    v = torch.randn(obj.dim, device=obj.device)
    V = torch.randn(10, obj.dim, device=obj.device)
    obj.hvp(v)
    grad()
    out = {}
    for name, fn, per in (("gradient", grad, 1), ("hvp_from_scratch", lambda: fresh.hvp(v), 1),
                          ("hvp_cached_graph", lambda: obj.hvp(v), 1), ("hvp_block10_per_vector", lambda: obj.hvp(V),
                                                                        10)):
        ts = []
        for _ in range(reps):
            _sync(x)
            t = time.perf_counter()
            fn()
            _sync(x)
            ts.append((time.perf_counter() - t) / per)
        out[name] = statistics.median(ts)
    model.zero_grad(set_to_none=True)
    return out


def worker(lib: str, width: int, threads: int, weights: str) -> None:
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    model, batch = build(width, train_epochs=0)  # trained weights come from the parent (no training peak here)
    model.load_state_dict(load_file(weights))
    model.eval()
    run_htsr(model, (batch[0][:2], batch[1][:2]), 0, "eig")  # warm up torch's lazy initialisation alike
    base = _hwm_kib()
    if lib == "pyhessian":
        run_pyhessian(model, batch, 0, "eig")
        run_pyhessian(model, batch, 0, "trace")
    else:
        run_htsr(model, batch, 0, "eig")
        run_htsr(model, batch, 0, "hutchinson")
        run_htsr(model, batch, 0, "hutch++")
    peak = _hwm_kib()
    print(json.dumps({"lib": lib, "rss_increase_mib": (peak - base) / 1024, "peak_mib": peak / 1024}))


def _hwm_kib() -> float:
    """This process's peak RSS (VmHWM, KiB). Not ``getrusage``'s ru_maxrss: that one keeps the parent's peak
    across fork + exec, which hid every increase below the parent's size (both libraries read +0.0 MiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def close_pair_mlp(seed: int):
    """The clustered-spectrum case of tests/test_landscape_hessian.py (float32 here, as PyHessian runs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 8, generator=g, dtype=torch.float64).float()
    y = torch.randint(0, 3, (120,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 3))
    return model.eval(), (x, y)


class _CountingHVP:
    """Wraps ``pyhessian.hessian.hessian_vector_product``: counts products and records, for each, the Rayleigh
    quotient and residual of the (unit) input vector, i.e. of the iterate power iteration holds at that product."""

    def __init__(self):
        import importlib

        ph = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports the class)
        self.ph, self.orig, self.log = ph, ph.hessian_vector_product, []

    def __enter__(self):
        def wrapped(gradsH, params, v):
            hv = self.orig(gradsH, params, v)
            fv = torch.cat([t.reshape(-1) for t in v]).double()
            fh = torch.cat([t.reshape(-1) for t in hv]).double()
            theta = float(fv @ fh) / float(fv @ fv)
            self.log.append((theta, float((fh - theta * fv).norm() / fv.norm())))
            return hv

        self.ph.hessian_vector_product = wrapped
        return self

    def __exit__(self, *exc):
        self.ph.hessian_vector_product = self.orig

    def first_pass(self, tau: float) -> int | None:
        return next((i + 1 for i, (th, r) in enumerate(self.log) if r <= tau * abs(th)), None)


def _residual(obj, theta: float, v: torch.Tensor) -> float:
    v = v.reshape(-1).to(obj.device, obj.dtype)
    v = v / v.norm()
    return float((obj.hvp(v) - theta * v).norm())


def residual_comparison(args) -> None:
    """Top eigenvalue, htsr vs PyHessian, at equal residual-checked accuracy (see the module docstring)."""
    from pyhessian import hessian

    from htsr.landscape.hessian import top_eigenvalues
    from htsr.landscape.objective import Objective

    taus = [float(t) for t in args.taus.split(",")]
    cases = [(f"digits CNN w{args.width}", *build(args.width), 1000)]
    cases += [(f"MLP seed {s}", *close_pair_mlp(s), 4000) for s in (17, 18, 21)]
    print("top eigenvalue at equal residual-checked accuracy ||Hv - theta v|| <= tau |theta| "
          f"({args.repeats} seeds per case, float32, cpu, {args.threads} thread(s))")
    hdr = (f"{'case':16s} {'tau':>6s} {'method':26s} {'HVPs':>7s} {'median s':>9s} {'passes':>7s} "
           f"{'|rel err|':>9s}")
    totals: dict[tuple, list] = {}
    for name, model, batch, cap in cases:
        ref_obj = Objective(model, batch)
        lam = float(top_eigenvalues(Objective(__import__("copy").deepcopy(model).double(),
                                              (batch[0].double(), batch[1])), 1, tol=1e-9, max_iter=400)
                    .eigenvalues[0])
        print(f"\n{name}: {ref_obj.dim} parameters, reference top eigenvalue {lam:.6g} (float64 Lanczos, "
              "residual 1e-9)")
        print(hdr)
        for tau in taus:
            rows: dict[str, list] = {}
            for s in range(args.repeats):
                for method in ("lanczos", "power"):
                    t0 = time.perf_counter()
                    r = top_eigenvalues(Objective(model, batch), 1, method=method, tol=tau, seed=s,
                                        max_iter=cap if method == "power" else 100)
                    t = time.perf_counter() - t0
                    ok = _residual(ref_obj, float(r.eigenvalues[0]), r.eigenvectors[0]) <= tau * abs(
                        r.eigenvalues[0]) * (1 + 1e-4)
                    rows.setdefault(f"htsr {method}", []).append((r.n_matvecs, t, ok, r.eigenvalues[0]))
                torch.manual_seed(s)
                with _CountingHVP() as c:
                    t0 = time.perf_counter()
                    h = hessian(model, nn.CrossEntropyLoss(), data=batch, cuda=False)
                    vals, vecs = h.eigenvalues(maxIter=100, tol=tau, top_n=1)
                    t = time.perf_counter() - t0
                v = torch.cat([x.reshape(-1) for x in vecs[0]])
                ok = _residual(ref_obj, float(vals[0]), v) <= tau * abs(vals[0]) * (1 + 1e-4)
                rows.setdefault("PyHessian own rule", []).append((len(c.log), t, ok, vals[0]))
                torch.manual_seed(s)
                with _CountingHVP() as c:
                    h = hessian(model, nn.CrossEntropyLoss(), data=batch, cuda=False)
                    h.eigenvalues(maxIter=cap, tol=0.0, top_n=1)
                k = c.first_pass(tau)
                if k is None:
                    rows.setdefault("PyHessian at equal residual", []).append((float("nan"), float("nan"), False,
                                                                               float("nan")))
                else:
                    torch.manual_seed(s)
                    t0 = time.perf_counter()
                    h = hessian(model, nn.CrossEntropyLoss(), data=batch, cuda=False)
                    vals, _ = h.eigenvalues(maxIter=k, tol=0.0, top_n=1)
                    t = time.perf_counter() - t0
                    th = c.log[k - 1][0]
                    rows.setdefault("PyHessian at equal residual", []).append((k, t, True, th))
                model.zero_grad(set_to_none=True)
            for m, v in rows.items():
                ns, ts, oks, vals = zip(*v, strict=True)
                errs = [abs(x / lam - 1) for x in vals]
                print(f"{name:16s} {tau:6.0e} {m:26s} {np.nanmean(ns):7.1f} {np.nanmedian(ts):9.4f} "
                      f"{sum(oks)}/{len(oks):<5d} {np.nanmax(errs):9.1e}")
                totals.setdefault((name, tau, m), []).extend(v)
            a, b = rows["PyHessian at equal residual"], rows["htsr lanczos"]
            print(f"{'':16s} {'':6s} -> Lanczos vs PyHessian at equal residual: "
                  f"{np.nanmean([x[0] for x in a]) / np.mean([x[0] for x in b]):.2f}x fewer products, "
                  f"{np.nanmedian([x[1] for x in a]) / np.median([x[1] for x in b]):.2f}x less time")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--worker", choices=["pyhessian", "htsr"], default=None)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory-only", action="store_true", help="only the peak-RSS comparison")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: where both libraries run")
    ap.add_argument("--residual", action="store_true",
                    help="only the top-eigenvalue comparison at equal residual-checked accuracy")
    ap.add_argument("--taus", default="1e-2,1e-3", help="residual tolerances for --residual (default 1e-2,1e-3)")
    ap.add_argument("--hutchpp-budgets", default="",
                    help="extra Hutch++ product budgets to time, e.g. 12,15,21 (the equal-accuracy comparison)")
    args = ap.parse_args()
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        print("SKIP: pyhessian is not installed (pip install --no-deps pyhessian==0.1)")
        return 0
    if args.worker:
        worker(args.worker, args.width, args.threads, args.weights)
        return 0
    torch.set_num_threads(args.threads)
    if args.residual:
        residual_comparison(args)
        return 0
    model, batch = build(args.width)
    if args.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 as on the CPU (PyHessian's own setting)
        torch.backends.cudnn.allow_tf32 = False
        model = model.to(args.device)
        batch = (batch[0].to(args.device), batch[1].to(args.device))
        run_htsr(model, (batch[0][:2], batch[1][:2]), 0, "eig")  # CUDA context and kernels warm for both
        run_pyhessian(model, (batch[0][:2], batch[1][:2]), 0, "eig")
    if args.memory_only:
        if args.device == "cpu":
            memory(model, args)
        else:
            gpu_memory(model, batch)
        return 0
    lam, tr, dim = references(model, batch)
    where = args.device if args.device != "cpu" else f"cpu, {args.threads} thread(s)"
    print(f"model: digits CNN width {args.width}, {dim} parameters, batch 200, float32, {where}")
    print(f"reference: top eigenvalue {lam:.6g}, exact trace {tr:.6g}")
    rows = {}
    cases = [("pyhessian", "eig"), ("htsr", "eig"), ("pyhessian", "trace"), ("htsr", "hutchinson"),
             ("htsr", "hutch++")]
    extra = [int(b) for b in args.hutchpp_budgets.split(",") if b.strip()]
    cases += [("htsr", f"hutch++@{b}") for b in extra]
    for s in range(args.repeats):  # interleaved, so that load changes hit every method alike
        for lib, what in cases:
            fn = run_pyhessian if lib == "pyhessian" else run_htsr
            t, (val, n) = timed(lambda fn=fn, what=what, s=s: fn(model, batch, s, what))
            ref = lam if what == "eig" else tr
            rows.setdefault(f"{lib}:{what}", []).append((t, abs(val / ref - 1), n))
    print(f"\n{'method':22s} {'median s':>9s} {'mean |rel err|':>15s} {'max |rel err|':>14s} {'mean HVPs':>10s}")
    summary = {}
    for k, v in rows.items():
        ts, es, ns = zip(*v, strict=True)
        ns = [n for n in ns if n is not None]
        summary[k] = (statistics.median(ts), float(np.mean(es)))
        print(f"{k:22s} {statistics.median(ts):9.4f} {np.mean(es):15.2e} {np.max(es):14.2e} "
              f"{(np.mean(ns) if ns else float('nan')):10.1f}")
    print("\nspeed-up (PyHessian median time / htsr median time):")
    for a, b in (("pyhessian:eig", "htsr:eig"), ("pyhessian:trace", "htsr:hutchinson"),
                 ("pyhessian:trace", "htsr:hutch++"), *(("pyhessian:trace", f"htsr:hutch++@{b}") for b in extra)):
        print(f"  {b:18s} vs {a:16s}: {summary[a][0] / summary[b][0]:.2f}x faster; error ratio "
              f"{summary[b][1] / summary[a][1]:.2f} (< 1: more accurate)")
    c = hvp_cost(model, batch)
    print("\ncost of one Hessian-vector product relative to one gradient (median of 20):")
    for k in ("hvp_from_scratch", "hvp_cached_graph", "hvp_block10_per_vector"):
        print(f"  {k:24s} {c[k] / c['gradient']:.2f}x  ({c[k] * 1e3:.2f} ms vs {c['gradient'] * 1e3:.2f} ms)")
    if args.device == "cpu":
        memory(model, args)
    else:
        gpu_memory(model, batch)
    return 0


def memory(model, args) -> None:
    import tempfile
    from pathlib import Path

    from safetensors.torch import save_file

    print("\npeak RSS increase of a child process running eigenvalue + trace (same trained weights):")
    with tempfile.TemporaryDirectory() as d:
        w = str(Path(d) / "w.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, w)
        for lib in ("pyhessian", "htsr"):
            out = subprocess.run([sys.executable, __file__, "--worker", lib, "--width", str(args.width),
                                  "--threads", str(args.threads), "--weights", w], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {lib:10s} +{r['rss_increase_mib']:.1f} MiB (peak {r['peak_mib']:.0f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
