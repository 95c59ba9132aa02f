"""Cost of SAM, per-sample gradient norms, CKA and APGD sharpness (htsr.landscape, part B).

Side-by-side in one process, alternating the compared variants so load drift hits both:

1. **SAM step overhead**: one training step (forward + backward + update) of plain ``torch.optim.SGD``
   vs ``SAM(SGD).step(closure)`` (two forward/backward passes), and vs a hand-written two-pass SAM step
   (the floor for any SAM implementation). Targets: SAM / SGD <= 2.3x; SAM / hand-written <= 1.15x.
2. **Per-sample squared gradient norms** (SharpBalance's score): ``method="vmap"`` (torch.func) vs
   ``method="loop"`` (one backward per sample, SB's ``compute_sample_grads``). Target: vmap >= 3x faster.
3. **CKA**: full-batch ``linear_cka`` by the feature (p x q) and Gram (n x n) routes, and the minibatch
   estimator over the same samples (time and the peak size of what it keeps).
4. **APGD sharpness**: seconds per batch of 5 samples (20 iterations) and loss/gradient evaluations per
   batch, against the reference's count (one forward+backward and one extra forward per iteration).

    python benchmarks/bench_cka_sam.py [--repeats 5] [--threads 1] [--json OUT]

Models: MLP 64-256-256-10 and a small CNN on scikit-learn digits (8x8 images), batch 128.
"""

from __future__ import annotations

import argparse

import _common as C


def data():
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn():
    from torch import nn

    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(256, 10))


def bench_sam(x, y, make, repeats, steps=20):
    import torch
    from torch import nn

    from htsr.landscape.sam import SAM

    xb, yb = x[:128], y[:128]
    torch.manual_seed(0)
    m_sgd, m_sam, m_hand = make(), make(), make()
    m_sam.load_state_dict(m_sgd.state_dict())
    m_hand.load_state_dict(m_sgd.state_dict())
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=0.05, momentum=0.9)
    sam = SAM(m_sam.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    hand = torch.optim.SGD(m_hand.parameters(), lr=0.05, momentum=0.9)
    loss = nn.functional.cross_entropy

    def step_sgd():
        for _ in range(steps):
            sgd.zero_grad()
            loss(m_sgd(xb), yb).backward()
            sgd.step()

    def closure():
        sam.zero_grad()
        out = loss(m_sam(xb), yb)
        out.backward()
        return out

    def step_sam():
        for _ in range(steps):
            sam.zero_grad()
            loss(m_sam(xb), yb).backward()
            sam.step(closure)

    params = list(m_hand.parameters())

    def step_hand():
        for _ in range(steps):
            hand.zero_grad()
            loss(m_hand(xb), yb).backward()
            with torch.no_grad():
                gn = torch.norm(torch.stack([p.grad.norm() for p in params]))
                eps = [0.05 * p.grad / (gn + 1e-12) for p in params]
                for p, e in zip(params, eps, strict=True):
                    p.add_(e)
            hand.zero_grad()
            loss(m_hand(xb), yb).backward()
            with torch.no_grad():
                for p, e in zip(params, eps, strict=True):
                    p.sub_(e)
            hand.step()

    for f in (step_sgd, step_sam, step_hand):  # warm-up
        f()
    ts = {"sgd": [], "sam": [], "hand": []}
    for _ in range(repeats):
        for k, f in (("sgd", step_sgd), ("sam", step_sam), ("hand", step_hand)):
            ts[k].append(C.timed(f)[0] / steps)
    return {k: C.median(v) for k, v in ts.items()}


def bench_persample(x, y, make, repeats, n=256):
    import numpy as np
    import torch

    from htsr.landscape.persample import per_sample_grad_norms

    torch.manual_seed(0)
    m = make()
    xs, ys = x[:n], y[:n]
    a = per_sample_grad_norms(m, (xs, ys), method="vmap")
    b = per_sample_grad_norms(m, (xs, ys), method="loop")
    err = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))
    ts = {"vmap": [], "loop": []}
    for _ in range(repeats):
        ts["vmap"].append(C.timed(lambda: per_sample_grad_norms(m, (xs, ys), method="vmap"))[0])
        ts["loop"].append(C.timed(lambda: per_sample_grad_norms(m, (xs, ys), method="loop"))[0])
    return {k: C.median(v) for k, v in ts.items()} | {"max_rel_diff": err, "n": n}


def bench_cka(repeats, n=4096, p=512, q=256, bs=256):
    import torch

    from htsr.landscape.cka import MinibatchCKA, linear_cka

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, p, generator=g)
    y = x[:, :q] @ torch.randn(q, q, generator=g) + torch.randn(n, q, generator=g)

    def mb():
        acc = MinibatchCKA()
        for i in range(0, n, bs):
            acc.update([x[i:i + bs]], [y[i:i + bs]])
        return acc.compute()[0, 0]

    out = {"features": [], "gram": [], "minibatch": []}
    vals = {}
    for _ in range(repeats):
        for k, f in (("features", lambda: linear_cka(x, y, debiased=True, method="features")),
                     ("gram", lambda: linear_cka(x, y, debiased=True, method="gram")), ("minibatch", mb)):
            t, v = C.timed(f)
            out[k].append(t)
            vals[k] = float(v)
    res = {k: C.median(v) for k, v in out.items()}
    res.update(values=vals, n=n, p=p, q=q, bs=bs)
    return res


def bench_apgd(x, y, make, repeats, n_batches=4):
    import torch

    from htsr.landscape.sharpness import worst_case_sharpness

    torch.manual_seed(0)
    m = make().eval()
    batches = [(x[i * 5:(i + 1) * 5], y[i * 5:(i + 1) * 5]) for i in range(n_batches)]
    ts = []
    r = None
    for _ in range(repeats):
        t, r = C.timed(lambda: worst_case_sharpness(m, batches, rho=0.05, p=2))
        ts.append(t / n_batches)
    evals = float(r.per_batch["n_loss_evals"].mean())
    return {"s_per_batch": C.median(ts), "evals_per_batch": evals, "reference_fwd": 20 * 2 + 1,
            "reference_bwd": 20, "ours_bwd": evals - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared box)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    info = C.announce_machine(label="")
    x, y = data()
    results = {"machine": info, "sam": {}, "persample": {}, "apgd": {}}

    rows = []
    for name, make in (("MLP 64-256-256-10", mlp), ("CNN 2 conv", cnn)):
        r = bench_sam(x, y, make, args.repeats)
        results["sam"][name] = r
        rows.append([name, C.fmt_s(r["sgd"]), C.fmt_s(r["hand"]), C.fmt_s(r["sam"]),
                     C.fmt_x(r["sam"] / r["sgd"]), C.fmt_x(r["sam"] / r["hand"]),
                     C.verdict(r["sam"] / r["sgd"] <= 2.3 and r["sam"] / r["hand"] <= 1.15)])
    C.print_table(["model (batch 128)", "SGD step", "hand 2-pass SAM", "htsr SAM step", "SAM / SGD",
                   "SAM / hand", "target"], rows, "SAM step overhead")

    rows = []
    for name, make in (("MLP 64-256-256-10", mlp), ("CNN 2 conv", cnn)):
        r = bench_persample(x, y, make, args.repeats)
        results["persample"][name] = r
        rows.append([name, r["n"], C.fmt_s(r["loop"]), C.fmt_s(r["vmap"]), C.fmt_x(r["loop"] / r["vmap"]),
                     f"{r['max_rel_diff']:.1e}", C.verdict(r["loop"] / r["vmap"] >= 3)])
    C.print_table(["model", "samples", "loop", "vmap", "speed-up", "max rel diff", "target >= 3x"], rows,
                  "Per-sample squared gradient norms")

    r = bench_cka(args.repeats)
    results["cka"] = r
    C.print_table(["route (n=4096, p=512, q=256, debiased)", "time", "CKA"],
                  [["features (p x q)", C.fmt_s(r["features"]), f"{r['values']['features']:.5f}"],
                   ["gram (n x n)", C.fmt_s(r["gram"]), f"{r['values']['gram']:.5f}"],
                   [f"minibatch (batches of {r['bs']})", C.fmt_s(r["minibatch"]), f"{r['values']['minibatch']:.5f}"]],
                  "CKA")

    rows = []
    for name, make in (("MLP 64-256-256-10", mlp), ("CNN 2 conv", cnn)):
        r = bench_apgd(x, y, make, max(1, args.repeats // 2))
        results["apgd"][name] = r
        rows.append([name, C.fmt_s(r["s_per_batch"]), f"{r['evals_per_batch']:.0f} (+2 metric fwd)",
                     f"{r['reference_bwd']} fwd+bwd + {r['reference_fwd'] - r['reference_bwd']} fwd"])
    C.print_table(["model", "time / batch of 5 (20 it.)", "our fwd+bwd / batch", "reference / batch"], rows,
                  "APGD worst-case sharpness (p=2, adaptive, rho=0.05)")
    info["loadavg_end"] = C.loadavg()
    print(f"\nload avg at end: {info['loadavg_end']}")
    C.write_json(args.json, results)


if __name__ == "__main__":
    main()
