"""Outputs of the methods written by their own writers (PruneReport.save, ResultStore, write_table/write_json,
Diagnosis/MDTree to_dict), small and seeded, for the report tests; and a 7B-shaped synthetic analysis."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def pruning_dir(d: Path, n: int = 8) -> Path:
    from htsr.pruning.prune import REPORT_FILE, PruneReport

    rng = np.random.default_rng(0)
    alphas = rng.uniform(2.5, 6.0, n)
    layers = [{"name": f"model.layers.{i // 4}.mlp.proj{i % 4}", "block": i // 4, "shape": [64, 32], "params": 2048,
               "target_sparsity": float(0.3 + 0.05 * (a - 4)), "achieved_sparsity": float(0.3 + 0.05 * (a - 4)),
               "metric": float(a)} for i, a in enumerate(alphas)]
    layers[2]["metric"] = None
    rep = PruneReport(layers=layers, target_sparsity=0.3, achieved_sparsity=0.3001,
                      settings={"pruner": "magnitude", "allocation": "alpha", "metric": "alpha_mid", "epsilon": 0.2,
                                "model_dir": "tiny"}, imputed_metric_layers=[layers[2]["name"]], elapsed_s=1.5)
    d.mkdir(parents=True, exist_ok=True)
    rep.save(d / REPORT_FILE)
    return d


def tempbalance_dir(d: Path) -> Path:
    from htsr.experiments import ResultStore

    store = ResultStore(d)
    for method in ("baseline", "tb"):
        for fraction in (0.5, 1.0):
            for seed in (0, 1):
                key = f"digits__{method}__{fraction}__{seed}"
                acc = 0.9 + 0.02 * (method == "tb") + 0.05 * fraction + 0.001 * seed
                hist = [{"epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "test_acc": acc - 0.1 / e, "time_s": 0.1}
                        for e in (1, 2, 3)]
                tb_hist = [{"update": u, "step": 10 * u, "unit": f"layer{k}", "metric": "alpha", "value": 3.0 + k,
                            "multiplier": 0.8 + 0.2 * k + 0.01 * u, "lr": 0.01 * (0.8 + 0.2 * k), "fallback": False}
                           for u in range(3) for k in range(3)] if method == "tb" else []
                store.add(key, {"recipe": "digits", "method": method, "fraction": fraction, "seed": seed},
                          {"status": "ok", "accuracy": acc, "train_time_s": 1.0},
                          {"history": hist, "tb_history": tb_hist, "tb_excluded": {}})
    return d


def tinymem_dir(d: Path) -> Path:
    import pandas as pd

    from htsr.io import write_json, write_table

    d.mkdir(parents=True, exist_ok=True)
    rows = [{"method": m, "family": fam, "mem_before": 40.0, "mem_after": after, "acc_before": 90.0,
             "acc_after": acc, "asr_after": math.nan, "score": 0.1 * i, "time_s": 1.0 + i, "error": "",
             "settings": "{}"} for i, (m, fam, after, acc) in enumerate(
                 [("dropout", "regularizer", 30.0, 88.0), ("l1", "finetuning", 10.0, 85.0),
                  ("balancedsubnet", "unlearning", 2.0, 80.0)])]
    rows.append({"method": "hc", "family": "unlearning", "mem_before": 40.0, "mem_after": math.nan,
                 "acc_before": 90.0, "acc_after": math.nan, "asr_after": math.nan, "score": math.nan, "time_s": 0.1,
                 "error": "RuntimeError: boom", "settings": "{}"})
    write_table(d / "table.csv", pd.DataFrame(rows))
    write_json(d / "run.json", {"config": {"task": "mult"}, "layers": 2, "epochs": 3, "batch_size": 32,
                                "total_time_s": 12.5, "methods": [r["method"] for r in rows], "settings": {},
                                "base": None})
    return d


def mdtree_diagnosis(p: Path) -> Path:
    from htsr.diagnosis.advice import ADVICE, Diagnosis
    from htsr.io import write_json

    diag = Diagnosis(features={"train_error": 1.5, "mode_connectivity_peak": 3.2, "hessian_t": 2.1},
                     predictions={"temperature": "small", "width": "width"},
                     advice=[ADVICE[("temperature", "small")], ADVICE[("width", "width")]],
                     notes=["data: not diagnosed (one label)"],
                     trees={"temperature": {"n_train": 20, "train_accuracy": 0.9, "constant": False}})
    write_json(p, diag.to_dict())
    return p


def mdtree_tree(p: Path) -> Path:
    from htsr.diagnosis.mdtree import MDTreeTemperature
    from htsr.io import write_json

    write_json(p, MDTreeTemperature.from_thresholds([0.68, -9.37, 6.38]).to_dict())
    return p


def shaped_analysis(n_blocks: int = 32, seed: int = 0):
    """A 7B-shaped analysis (32 blocks x 7 matrices = 224 rows) with Pareto-tailed eigenvalues (4,096 per matrix,
    11,008-wide MLP matrices have 4,096 too), fitted rows, and the eigenvalues kept."""
    from htsr.spectra.analysis import CONVENTIONS, SCHEMA_VERSION, Analysis
    from htsr.spectra.config import make_config

    rng = np.random.default_rng(seed)
    rows, evals = [], {}
    mats = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj")
    for b in range(n_blocks):
        for m in mats:
            name = f"model.layers.{b}.{m}"
            a = float(rng.uniform(2.2, 7.0))
            lam = np.sort(rng.pareto(a - 1.0, 4096) + 1.0) * 0.01
            xmin = float(np.quantile(lam, 0.9))
            evals[name] = lam
            rows.append({"name": name, "module": name, "kind": "linear", "shape": "4096x4096", "N": 4096, "M": 4096,
                         "num_evals": 4096, "status": "success", "reason": "", "alpha": a, "xmin": xmin,
                         "xmax": float(lam[-1]), "D": 0.05, "n_tail": 410, "alpha_hat": a * math.log10(lam[-1]),
                         "stable_rank": float(lam.sum() / lam[-1]), "log_spectral_norm": math.log10(lam[-1])})
    meta = {"schema": SCHEMA_VERSION, "htsr_version": "test", "source": "synthetic 7B-shaped", "preset": "htsr",
            "config": {}, "conventions": CONVENTIONS}
    return Analysis(rows, evals, meta, make_config("htsr"))
