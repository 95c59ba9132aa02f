"""Cost of SharpBalance's two extra pieces of work (issue 17), on real Fashion-MNIST with the ``cpu`` preset model.

1. **Phase-2 step vs a plain SAM step on the same batch** (target <= 1.1x): one
   :func:`htsr.training.train` step of :class:`htsr.ensembles.MixedSAM` on a 128-image batch whose SAM mask
   holds a fraction f of the batch (f = 0.25, 0.5, the fraction measured in the cpu comparison, 1.0), against
   ``htsr.landscape.SAM`` and plain SGD on the same batch. Variants alternate inside each repeat.
2. **Scoring the whole training set vs one training epoch** (target <= 3x): the per-sample squared gradient
   norms of every training image (:func:`htsr.landscape.per_sample_grad_norms`, vmap, chunks of 16 -- the
   reference's batch -- and 64 -- the preset's) against one epoch of SGD and one of SAM (phase 1 is SAM).

    python benchmarks/bench_sharpbalance.py [--repeats 5] [--train-size 8000] [--width 8] [--json OUT]

Run it alone (``heavy --exclusive``): the numbers are ratios of timings taken in the same process.
"""

from __future__ import annotations

import argparse

import _common as C


def bench_steps(x, y, width: int, fractions, repeats: int, steps: int = 10) -> dict:
    import torch

    from htsr.ensembles.config import preset_config
    from htsr.ensembles.ensemble import make_optimizer
    from htsr.ensembles.model import build_model
    from htsr.training import train

    cfg = preset_config("cpu", width=width)
    xb, yb = x[:128], y[:128]
    g = torch.Generator().manual_seed(0)
    variants = {"sgd": ("sgd", (xb, yb)), "sam": ("sam", (xb, yb))}
    for f in fractions:
        mask = torch.zeros(128, dtype=torch.bool)
        mask[torch.randperm(128, generator=g)[:round(f * 128)]] = True
        variants[f"mixed f={f:.2f}"] = ("mixed", (xb, yb, mask))
    runs = {}
    for name, (kind, batch) in variants.items():
        model = build_model("resnet", width, 0)
        opt = make_optimizer(cfg, model, kind)
        loss = opt.loss if kind == "mixed" else None
        train(model, [batch] * 2, opt, loss_fn=loss, epochs=1, progress=False)  # warm-up
        runs[name] = (model, opt, loss, batch)
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for name, (model, opt, loss, batch) in runs.items():
            t, _ = C.timed(lambda m=model, o=opt, lf=loss, b=batch: train(m, [b] * steps, o, loss_fn=lf, epochs=1,
                                                                          progress=False))
            times[name].append(t / steps)
    return {k: C.median(v) for k, v in times.items()}


def bench_scoring(x, y, width: int, repeats: int) -> dict:
    from htsr.ensembles.config import preset_config
    from htsr.ensembles.ensemble import make_optimizer
    from htsr.ensembles.model import EpochLoader, build_model
    from htsr.landscape.persample import per_sample_grad_norms
    from htsr.training import train

    cfg = preset_config("cpu", width=width)
    res = {"sgd_epoch": [], "sam_epoch": [], "score_16": [], "score_64": []}
    for r in range(repeats):
        for kind in ("sgd", "sam"):
            model = build_model("resnet", width, 0)
            opt = make_optimizer(cfg, model, kind)
            loader = EpochLoader(x, y, cfg.batch_size, seed=r)
            res[f"{kind}_epoch"].append(C.timed(lambda m=model, o=opt, ld=loader: train(
                m, ld, o, epochs=1, progress=False))[0])
        model = build_model("resnet", width, 0)
        for bs in (16, 64):
            res[f"score_{bs}"].append(C.timed(lambda m=model, b=bs: per_sample_grad_norms(
                m, (x, y), batch_size=b))[0])
    return {k: C.median(v) for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--score-repeats", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=8000)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=None,
                    help="the SAM fraction measured in a comparison (added to 0.25, 0.5, 1.0)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from htsr.data.fashion_mnist import fashion_mnist_split

    info = C.announce_machine(threads=a.threads)
    x, y, _, _ = fashion_mnist_split(a.train_size / 60000, 0)
    fractions = sorted({0.25, 0.5, 1.0, *([round(a.fraction, 2)] if a.fraction else [])})
    st = bench_steps(x, y, a.width, fractions, a.repeats)
    sam = st["sam"]
    rows = [[k, C.fmt_s(v), C.fmt_x(v / sam), C.fmt_x(v / st["sgd"]),
             C.verdict(v <= 1.1 * sam) if k.startswith("mixed") else ""] for k, v in st.items()]
    C.print_table(["step (batch 128)", "time", "/ SAM step", "/ SGD step", "<= 1.1x SAM"], rows,
                  f"1. phase-2 step vs SAM step (ResNet width {a.width}, {a.repeats} repeats, median)")
    sc = bench_scoring(x, y, a.width, a.score_repeats)
    rows = []
    for bs in (16, 64):
        s = sc[f"score_{bs}"]
        rows.append([f"score {x.shape[0]} images, chunk {bs}", C.fmt_s(s), C.fmt_x(s / sc["sgd_epoch"]),
                     C.fmt_x(s / sc["sam_epoch"]), C.verdict(s <= 3 * sc["sgd_epoch"])])
    rows.append(["one SGD epoch", C.fmt_s(sc["sgd_epoch"]), "1.00x", "", ""])
    rows.append(["one SAM epoch", C.fmt_s(sc["sam_epoch"]), C.fmt_x(sc["sam_epoch"] / sc["sgd_epoch"]), "1.00x", ""])
    C.print_table(["work", "time", "/ SGD epoch", "/ SAM epoch", "<= 3x an (SGD) epoch"], rows,
                  f"2. scoring the training set vs one epoch ({a.score_repeats} repeats, median)")
    info["loadavg_end"] = C.loadavg()
    print(f"load avg at end: {info['loadavg_end']}")
    C.write_json(a.json, {"machine": info, "steps": st, "scoring": sc, "args": vars(a)})


if __name__ == "__main__":
    main()
