"""Spectral-engine benchmarks (issue 22): FARMS vs plain alpha on random matrices, GGUF quantisation and alpha on
MiniLM, SVD smoothing and FARMS-based AlphaPruning on the KJV causal LM.

    python benchmarks/bench_engine.py farms --out-dir /tmp/eng/farms          # table + plot, seeded sweep
    python benchmarks/bench_engine.py gguf --out-dir /tmp/eng/gguf            # MiniLM -> Q8_0 / Q4_0 GGUF
    python benchmarks/bench_engine.py kjv --model /tmp/kjv --out-dir /tmp/eng/kjv   # smoothing + pruning ppl

Every sweep runs through :func:`htsr.experiments.run_sweep` (resumable result store under --out-dir).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from htsr.experiments import ResultStore, grid, run_sweep  # noqa: E402
from htsr.io import save_png, write_json  # noqa: E402
from htsr.spectra.analysis import analyze  # noqa: E402

ASPECTS = (1, 2, 3, 4, 5, 6, 7, 8)


# ------------------------------------------------------------------ FARMS on random matrices
def random_matrix(dist: str, n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, m, generator=g)
    if dist == "gauss":
        return z
    chi2 = sum(torch.randn(n, m, generator=g) ** 2 for _ in range(3))  # Student-t(3)
    return z / torch.sqrt(chi2 / 3)


def farms_cell(dist: str, aspect: int, seed: int, rule: str, cols: int = 256) -> tuple[dict, None]:
    sd = {"w.weight": random_matrix(dist, cols * aspect, cols, 1000 * seed + aspect)}
    t = time.perf_counter()
    p = analyze(sd, xmin_rule=rule, workers=1).rows[0]
    tp = time.perf_counter() - t
    t = time.perf_counter()
    f = analyze(sd, xmin_rule=rule, estimator="farms", workers=1).rows[0]
    tf = time.perf_counter() - t
    return {"alpha_plain": p["alpha"], "alpha_farms": f["alpha"], "windows": f["farms_windows"],
            "window": f["farms_window"], "plain_s": tp, "farms_s": tf}, None


def cmd_farms(a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(a.out_dir)
    cells = grid(dist=["gauss", "t3"], rule=["ks", "median", "peak"], aspect=list(ASPECTS),
                 seed=list(range(a.seeds)))
    df = run_sweep(farms_cell, cells, ResultStore(out / "store"), extra={"cols": a.cols})
    df = df[df["status"] == "ok"]
    g = df.groupby(["dist", "rule", "aspect"])[["alpha_plain", "alpha_farms"]].agg(["mean", "std"])
    lines = [f"alpha (mean ± sd over {a.seeds} seeds) of {a.cols}-column random matrices, rows = aspect x "
             f"{a.cols}; FARMS: square windows of half the smaller side, 10 x 10 grid", "",
             "| dist | xmin rule | estimator | " + " | ".join(f"Q={q}" for q in ASPECTS) + " | range of means |",
             "|---|---|---|" + "---:|" * (len(ASPECTS) + 1)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    for i, dist in enumerate(("gauss", "t3")):
        for j, rule in enumerate(("ks", "median", "peak")):
            ax = axes[i, j]
            for est, style in (("plain", "o-"), ("farms", "s-")):
                mean = [g.loc[(dist, rule, q), (f"alpha_{est}", "mean")] for q in ASPECTS]
                sd = [g.loc[(dist, rule, q), (f"alpha_{est}", "std")] for q in ASPECTS]
                ax.errorbar(ASPECTS, mean, yerr=sd, fmt=style, capsize=3, label=est)
                cells_txt = " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in zip(mean, sd, strict=True))
                lines.append(f"| {'Gaussian' if dist == 'gauss' else 'Student-t(3)'} | {rule} | {est} | {cells_txt} | "
                             f"{max(mean) - min(mean):.2f} |")
            ax.set_title(f"{'Gaussian' if dist == 'gauss' else 'Student-t(3)'}, xmin {rule}")
            ax.set_xlabel("aspect ratio N/M")
            ax.set_ylabel("alpha")
            ax.legend()
    fig.tight_layout()
    save_png(fig, out / "farms_aspect.png")
    table = "\n".join(lines)
    (out / "farms_table.md").write_text(table + "\n")
    print(table)
    print(f"\nplain s/matrix (mean) {df['plain_s'].mean():.3f}, farms s/matrix {df['farms_s'].mean():.3f}")


# ------------------------------------------------------------------ GGUF on MiniLM
def write_gguf(state: dict[str, torch.Tensor], path: Path, qtype_name: str) -> dict:
    """MiniLM's tensors as GGUF: 2-D weights whose rows are a multiple of the block size quantised to
    ``qtype_name``, everything else F32 (as llama.cpp keeps norms and biases in float)."""
    import gguf
    from gguf.quants import quantize

    T = gguf.GGMLQuantizationType
    qt = T[qtype_name]
    block = gguf.GGML_QUANT_SIZES[qt][0]
    w = gguf.GGUFWriter(str(path), "bert")
    counts = {"quantised": 0, "f32": 0}
    for name, t in state.items():
        arr = t.detach().float().numpy()
        if arr.ndim == 2 and arr.shape[1] % block == 0 and qt != T.F32:
            w.add_tensor(name, quantize(arr, qt), raw_dtype=qt)
            counts["quantised"] += 1
        else:
            w.add_tensor(name, arr)
            counts["f32"] += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts


def cmd_gguf(a: argparse.Namespace) -> None:
    from safetensors.torch import load_file

    from htsr.examples import example_path

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(example_path("minilm") / "model.safetensors"))
    ref = analyze(example_path("minilm"), workers=1)
    res = {"float": {r["name"]: r.get("alpha", float("nan")) for r in ref.rows if r["status"] == "success"}}
    info = {}
    for q in ("Q8_0", "Q4_0"):
        f = out / f"minilm-{q.lower()}.gguf"
        counts = write_gguf(state, f, q)
        t = time.perf_counter()
        an = analyze(f, workers=1)
        info[q] = {"counts": counts, "analyze_s": time.perf_counter() - t, "file_bytes": f.stat().st_size}
        res[q] = {r["name"]: r.get("alpha", float("nan")) for r in an.rows if r["status"] == "success"}
    names = [n for n in res["float"] if all(n in res[q] for q in ("Q8_0", "Q4_0"))]
    lines = ["| format | layers | mean alpha | mean |Δalpha| vs float | max |Δalpha| | max rel. Δ | analyze s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = np.array([res["float"][n] for n in names])
    lines.append(f"| float32 (safetensors) | {len(names)} | {base.mean():.3f} | 0 | 0 | 0 | |")
    summary = {}
    for q in ("Q8_0", "Q4_0"):
        v = np.array([res[q][n] for n in names])
        d = np.abs(v - base)
        summary[q] = {"mean_alpha": float(v.mean()), "mean_abs_delta": float(d.mean()), "max_abs_delta": float(d.max()),
                      "max_rel_delta": float((d / base).max()), "worst_layer": names[int(d.argmax())]}
        lines.append(f"| {q} GGUF | {len(names)} | {v.mean():.3f} | {d.mean():.4f} | {d.max():.4f} | "
                     f"{(d / base).max():.2%} | {info[q]['analyze_s']:.1f} |")
    table = "\n".join(lines)
    print(table)
    print(json.dumps(summary, indent=1))
    write_json(out / "gguf.json", {"per_layer": res, "info": info, "summary": summary})


# ------------------------------------------------------------------ KJV LM: smoothing and FARMS pruning
def cmd_kjv(a: argparse.Namespace) -> None:
    import copy

    from htsr.pruning.evaluation import calibration_windows, perplexity
    from htsr.pruning.prune import load_model, prune_model
    from htsr.spectra.smooth import smooth_state_dict
    from train_kjv_lm import corpora

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads((Path(a.model) / "training.json").read_text())
    seqlen = info["config"]["seqlen"]
    dense = load_model(a.model).eval()
    tr, te = corpora()
    te = te[: a.eval_chars]
    t = time.perf_counter()
    base = perplexity(dense, te, seqlen, batch_size=32)
    print(f"dense held-out ppl {base:.4f} on {len(te)} bytes ({time.perf_counter() - t:.1f} s)", flush=True)
    sd = {k: v.detach().clone() for k, v in dense.state_dict().items()}

    def smooth_cell(rule: str, target: str, rank: int = 0) -> tuple[dict, dict]:
        layers = {"all": ["model.layers.*"], "mlp": ["*.mlp.*"], "attn": ["*.self_attn.*"],
                  "last_mlp": [f"model.layers.{info['config']['layers'] - 1}.mlp.*"]}[target]
        t0 = time.perf_counter()
        new, res = smooth_state_dict(sd, rule=rule, rank=rank or None, layers=layers)
        sm_s = time.perf_counter() - t0
        m = copy.deepcopy(dense)
        m.load_state_dict(new)
        ppl = perplexity(m.eval(), te, seqlen, batch_size=32)
        rows = res.rows
        kept = sum(r["k"] * (r["N"] + r["M"]) if r["status"] == "smoothed" else r["N"] * r["M"] for r in rows)
        full = sum(r["N"] * r["M"] for r in rows)
        return ({"ppl": ppl, "dense_ppl": base, "n_smoothed": res.n_smoothed, "n_selected": len(rows),
                 "mean_k": float(np.mean([r["k"] for r in rows if r["status"] == "smoothed"] or [0])),
                 "mean_energy": float(np.mean([r["energy_kept"] for r in rows])),
                 "factor_param_frac": kept / full, "smooth_s": sm_s},
                {"rows": rows})

    cells = [c for c in grid(rule=["mp", "xmin", "detx"], target=["all", "mlp", "attn", "last_mlp"])]
    cells += grid(rule=["rank"], target=["all", "mlp", "last_mlp"], rank=[16, 64, 128])
    df = run_sweep(smooth_cell, cells, ResultStore(out / "smooth"), extra={"model": str(a.model)})
    print(df[["rule", "target", "rank", "n_smoothed", "mean_k", "mean_energy", "factor_param_frac", "ppl"]]
          .to_string(index=False), flush=True)

    calib = calibration_windows(tr, a.nsamples, seqlen, 0)

    def prune_cell(estimator: str, pruner: str, sparsity: float) -> tuple[dict, dict]:
        m = copy.deepcopy(dense)
        an = None
        if estimator != "uniform":
            an = analyze(m, "alphapruning", estimator=estimator, kinds=("linear",), layers=["model.layers.*"],
                         workers=1)
        rep = prune_model(m, sparsity, pruner, "uniform" if estimator == "uniform" else "alpha", a.epsilon, calib,
                          max_ratio=0.95, analysis=an)
        ppl = perplexity(m.eval(), te, seqlen, batch_size=32)
        blocks: dict[int, list] = {}
        for r in rep.layers:
            blocks.setdefault(r["block"], []).append((r["metric"], r["target_sparsity"]))
        bl = {str(k): {"mean_alpha": float(np.mean([x for x, _ in v])) if v[0][0] is not None else None,
                       "target": float(v[0][1])}
              for k, v in sorted(blocks.items())}
        return {"ppl": ppl, "achieved": rep.achieved_sparsity}, {"blocks": bl}

    pcells = grid(estimator=["uniform", "plain", "farms"], pruner=["wanda", "magnitude"], sparsity=[0.5, 0.7])
    pdf = run_sweep(prune_cell, pcells, ResultStore(out / "prune"), extra={"model": str(a.model),
                                                                          "epsilon": a.epsilon})
    print(pdf[["estimator", "pruner", "sparsity", "ppl", "achieved"]].to_string(index=False))
    for est in ("plain", "farms"):
        key = pdf[(pdf.estimator == est) & (pdf.pruner == "wanda") & (pdf.sparsity == 0.7)]["key"]
        if len(key):
            det = json.loads((out / "prune" / "cells" / f"{key.iloc[0]}.json").read_text())
            print(est, "blocks (mean alpha -> target sparsity):",
                  "; ".join(f"{b}: {v['mean_alpha']:.3f} -> {v['target']:.3f}" for b, v in det["blocks"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("farms")
    f.add_argument("--out-dir", required=True)
    f.add_argument("--seeds", type=int, default=3)
    f.add_argument("--cols", type=int, default=256)
    f.set_defaults(func=cmd_farms)
    g = sub.add_parser("gguf")
    g.add_argument("--out-dir", required=True)
    g.set_defaults(func=cmd_gguf)
    k = sub.add_parser("kjv")
    k.add_argument("--model", required=True)
    k.add_argument("--out-dir", required=True)
    k.add_argument("--eval-chars", type=int, default=100_000)
    k.add_argument("--nsamples", type=int, default=32)
    k.add_argument("--epsilon", type=float, default=0.3)
    k.set_defaults(func=cmd_kjv)
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.func(a)


if __name__ == "__main__":
    main()
