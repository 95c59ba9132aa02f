"""Reproduce the MD tree paper's Table B (MD ``benchmark/README.md``) on the MD population (shipped with htsr).

Five cases, each trained on part of the clean population F and tested on all of the noisy F'
(``optimal`` rows dropped), accuracy in % averaged over the seeds (42, 90, 38, 18, 72):

1. Q1 (batch too large/small), dataset transfer: 8 random (data, width) pairs = 96 configurations;
2. Q1, scale transfer: data <= 5K (``data_limit`` k=1);
3. Q1, scale transfer: params <= 0.011M (``width_limit`` k=2);
4. Q2 (width vs batch), dataset transfer: 1 random data fraction (about 167 configurations;
   ``random_data`` k=1, as MD ``scripts/q2_predict_width_temp.sh``);
5. Q2 (width vs batch), scale transfer: data <= 5K.

Methods: the MD tree; "Validation + DT" (depth-4 tree on train/test error and loss); "Hyperparameter +
DT" (depth-4 tree on log #data and log #params for Q1, log #data only for Q2). Optional extras: the CKA
variant of the Q1 MD tree and a free depth-4 tree on the loss-landscape features (no published value).

Baseline seeding: the public reference code gives every seed's tree the first seed's ``random_state``
(its ``dt_seed`` is assigned inside the seed loop). The published numbers match giving each seed its
own ``random_state`` (case 5, whose training set has no randomness: 63.61 published, 63.61 per-seed,
65.74 pinned), so ``baseline_seeding="per-seed"`` is the default; ``"pinned"`` reproduces the public code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from htsr.diagnosis.errors import DiagnosisError
from htsr.diagnosis.mdtree import (
    MDTreeClassifier,
    MDTreeTemperature,
    MDTreeTemperatureCKA,
    MDTreeWidthBatch,
    hyperparameter_tree,
    landscape_tree,
    validation_tree,
)
from htsr.diagnosis.population import load_md_collections
from htsr.diagnosis.transfer import PAPER_SEEDS, evaluate_transfer, prepare_task

MD_TREE, VALIDATION, HYPER = "MD tree", "Validation+DT", "Hyper+DT"
MD_TREE_CKA, LANDSCAPE = "MD tree (CKA)", "Landscape+DT"
#: Agreement asked of the reproduction, in accuracy points.
TOLERANCE = {MD_TREE: 0.1, VALIDATION: 1.0, HYPER: 1.0}


@dataclass(frozen=True)
class Case:
    """One row of Table B: the task, its training subset, and the published accuracies (%)."""

    number: int
    task: str
    training_set: str
    label: str
    scheme: str
    k: int
    tree: type[MDTreeClassifier]
    hyper_features: tuple[str, ...]
    published: dict[str, float]


CASES: tuple[Case, ...] = (
    Case(1, "Q1", "96 random configs (8 data-width pairs)", "bs_failure", "random", 8, MDTreeTemperature,
         ("log_data_amount", "log_para_amount"), {MD_TREE: 87.70, VALIDATION: 72.82, HYPER: 49.56}),
    Case(2, "Q1", "data <= 5K", "bs_failure", "data_limit", 1, MDTreeTemperature,
         ("log_data_amount", "log_para_amount"), {MD_TREE: 75.89, VALIDATION: 51.73, HYPER: 64.74}),
    Case(3, "Q1", "params <= 0.011M", "bs_failure", "width_limit", 2, MDTreeTemperature,
         ("log_data_amount", "log_para_amount"), {MD_TREE: 82.56, VALIDATION: 67.55, HYPER: 60.12}),
    Case(4, "Q2-width", "167 random configs (1 data fraction)", "width_vs_batch", "random_data", 1,
         MDTreeWidthBatch, ("log_data_amount",), {MD_TREE: 74.10, VALIDATION: 55.79, HYPER: 53.54}),
    Case(5, "Q2-width", "data <= 5K", "width_vs_batch", "data_limit", 1, MDTreeWidthBatch,
         ("log_data_amount",), {MD_TREE: 78.16, VALIDATION: 63.61, HYPER: 53.54}),
)
BASELINE_SEEDING = ("per-seed", "pinned")


def run_case(case: Case, clean: pd.DataFrame, noisy: pd.DataFrame, seeds: Sequence[int] = PAPER_SEEDS,
             baseline_seeding: str = "per-seed", extras: bool = False) -> list[dict]:
    """Rows (one per method) of one case: mean accuracy in %, per-seed accuracies, training-set size."""
    if baseline_seeding not in BASELINE_SEEDING:
        raise DiagnosisError(f"baseline_seeding must be one of {list(BASELINE_SEEDING)}, got {baseline_seeding!r}")
    pool, test = prepare_task(clean, noisy, case.label)
    per_seed = baseline_seeding == "per-seed"
    rs = None if per_seed else int(list(seeds)[0])
    methods = [(MD_TREE, case.tree()), (VALIDATION, validation_tree(random_state=rs)),
               (HYPER, hyperparameter_tree(case.hyper_features, random_state=rs))]
    if extras:
        if case.tree is MDTreeTemperature:
            methods.append((MD_TREE_CKA, MDTreeTemperatureCKA()))
        methods.append((LANDSCAPE, landscape_tree(random_state=rs)))
    rows = []
    for name, est in methods:
        t0 = time.perf_counter()
        r = evaluate_transfer(est, pool, test, case.label, case.scheme, case.k, seeds, reseed=per_seed, method=name)
        acc = 100.0 * r.mean_accuracy
        pub = case.published.get(name, np.nan)
        tol = TOLERANCE.get(name, np.nan)
        rows.append({
            "case": case.number, "task": case.task, "training_set": case.training_set, "method": name,
            "scheme": case.scheme, "k": case.k, "n_train": r.mean_n_train, "n_test": r.n_test,
            "reproduced": acc, "published": pub, "diff": acc - pub, "tolerance": tol,
            "within_tolerance": bool(abs(acc - pub) <= tol) if np.isfinite(pub) else None,
            "per_seed": " ".join(f"{100 * a:.3f}" for a in r.accuracies),
            "thresholds": (" | ".join(" ".join(f"{v:.4g}" for v in t) for t in r.thresholds)
                           if r.thresholds and r.thresholds[0] else ""),
            "time_s": time.perf_counter() - t0,
        })
    return rows


def reproduce_table(data_dir: str | os.PathLike | None = None, cases: Sequence[int] | None = None,
                    seeds: Sequence[int] = PAPER_SEEDS, baseline_seeding: str = "per-seed",
                    extras: bool = False) -> pd.DataFrame:
    """The reproduced Table B in long form: one row per (case, method), next to the published accuracy.
    ``data_dir``: a folder with the two population CSVs (default: the copies shipped with htsr)."""
    wanted = [c.number for c in CASES] if cases is None else list(cases)
    unknown = [n for n in wanted if n not in {c.number for c in CASES}]
    if unknown:
        raise DiagnosisError(f"unknown case(s) {unknown}; expected numbers in {[c.number for c in CASES]}")
    clean, noisy = load_md_collections(data_dir)
    rows: list[dict] = []
    for c in CASES:
        if c.number in wanted:
            rows.extend(run_case(c, clean, noisy, seeds, baseline_seeding, extras))
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame, markdown: bool = False) -> str:
    """Reproduced vs published accuracy (%), one line per case, a column pair per method."""
    methods = list(dict.fromkeys(table["method"]))
    head = ["case", "task", "training set", "n_train"]
    for m in methods:
        head += [m, "(paper)"]
    lines = []
    for (_num, _task), g in table.groupby(["case", "task"], sort=True):
        first = g.iloc[0]
        cells = [str(first["case"]), first["task"], first["training_set"], f"{first['n_train']:.1f}"]
        for m in methods:
            r = g[g["method"] == m]
            if len(r):
                rep, pub = r.iloc[0]["reproduced"], r.iloc[0]["published"]
                cells += [f"{rep:.3f}", f"{pub:.2f}" if np.isfinite(pub) else "-"]
            else:
                cells += ["-", "-"]
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in lines]
        return "\n".join(out) + "\n"
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*c) for c in lines]) + "\n"
