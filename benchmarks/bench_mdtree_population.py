"""MD tree on a user's own model family: the small own-population run, its diagnosis accuracy and wall time.

(a) ``build_population("small")``: 3 widths x 3 batch sizes x 2 digits fractions x 2 seeds of the BatchNorm
    VGG family (36 trainings, each measured: Hessian trace, Bezier peak between the seeds, output CKA),
    resumable in ``--out``; the wall time of the configurations trained in this run and the sum of the
    stored per-configuration times (which covers a resumed run).
(b) Diagnosis accuracy on held-out configurations: labels computed once on the whole grid (room for
    improvement of test accuracy), then leave-one-(width, data)-pair-out: each pair's batch-size line is
    held out, the MD trees (``fit_diagnoser``, auto bounds) are fitted on the other pairs' labelled rows and
    predict the held-out ones. Pooled accuracy next to the majority class of the training fold and the
    paper's baselines (depth-4 decision trees on validation metrics / on hyperparameters).

    nohup python benchmarks/bench_mdtree_population.py --out /tmp/htsr_mdtree_pop \\
        --markdown benchmarks/results/mdtree_population.md > /tmp/bench_mdpop.log 2>&1 &
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import _common as C
from htsr.diagnosis.config import OWN_TASKS, TASK_LABELS

TASKS = {t: TASK_LABELS[t] for t in OWN_TASKS}  # the tasks an own population is fitted on


def held_out_accuracy(labelled: pd.DataFrame, task: str, seed: int = 0) -> dict[str, float]:
    from htsr.diagnosis.diagnoser import fit_diagnoser
    from htsr.diagnosis.errors import DiagnosisError
    from htsr.diagnosis.mdtree import HYPERPARAMETER_FEATURES, hyperparameter_tree, validation_tree

    label = TASKS[task]
    rows = labelled[labelled[label] != "optimal"]
    hits = {"md_tree": [], "majority": [], "validation_dt": [], "hyper_dt": []}
    for (w, d), test in rows.groupby(["width", "data"]):
        train = rows[~((rows["width"] == w) & (rows["data"] == d))]
        if train.empty or test.empty:
            continue
        y = test[label].to_numpy()
        try:
            diag = fit_diagnoser(train, tasks=[task], relabel=False)
            pred = diag.predict(test)[task].to_numpy()
        except DiagnosisError:
            pred = np.array([None] * len(test))
        hits["md_tree"] += list(pred == y)
        hits["majority"] += list(train[label].mode().iloc[0] == y)
        if train[label].nunique() > 1:
            v = validation_tree(random_state=seed).fit(train, train[label])
            feats = list(HYPERPARAMETER_FEATURES) if task == "temperature" else [
                "log_para_amount" if task == "width" else "log_data_amount"]
            h = hyperparameter_tree(feats, random_state=seed).fit(train, train[label])
            hits["validation_dt"] += list(v.predict(test) == y)
            hits["hyper_dt"] += list(h.predict(test) == y)
        else:
            hits["validation_dt"] += list(train[label].iloc[0] == y)
            hits["hyper_dt"] += list(train[label].iloc[0] == y)
    out = {k: 100.0 * float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
    out["n_test"] = len(hits["md_tree"])
    out["labels"] = ", ".join(f"{k} {v}" for k, v in sorted(labelled[label].value_counts().items()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/htsr_mdtree_pop", help="population folder (resumable)")
    ap.add_argument("--grid", default="small")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None, help="write the results table (Markdown) here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from htsr.diagnosis.config import GRIDS
    from htsr.diagnosis.diagnoser import fit_diagnoser
    from htsr.diagnosis.labels import label_population
    from htsr.diagnosis.own_population import build_population

    t0 = time.perf_counter()
    pop = build_population(args.grid, args.out, progress=False)
    wall = time.perf_counter() - t0
    if pop.attrs["failed"]:
        raise SystemExit(f"failed configurations: {pop.attrs['failed']}")
    stored_s = float(pop["wall_s"].sum())
    print(f"population: {len(pop)} configurations ({pop.attrs['n_trained']} trained now, {pop.attrs['n_resumed']} "
          f"resumed) in {wall:.1f} s; stored per-configuration time {stored_s:.1f} s", flush=True)
    cols = ["width", "bs", "data", "test_acc", "train_error", "mode_connectivity_peak", "hessian_t", "CKA", "wall_s"]
    print(pop[cols].round(3).to_string(index=False))
    labelled = label_population(pop)
    t1 = time.perf_counter()
    results = {task: held_out_accuracy(labelled, task) for task in TASKS}
    eval_s = time.perf_counter() - t1
    full = fit_diagnoser(pop)
    lines = ["| task | labels (whole grid) | held-out rows | MD tree | majority | Validation+DT | Hyper+DT |",
             "|---|---|---|---|---|---|---|"]
    for task, r in results.items():
        lines.append(f"| {task} | {r['labels']} | {r['n_test']} | **{r['md_tree']:.1f}** | {r['majority']:.1f} | "
                     f"{r['validation_dt']:.1f} | {r['hyper_dt']:.1f} |")
    table = "\n".join(lines)
    print(table)
    fitted = "\n".join(f"- {t}: thresholds {tree.named_thresholds_}, training accuracy "
                       f"{100 * tree.train_accuracy_:.1f}% on {full.n_train[t]} rows"
                       for t, tree in full.trees.items())
    fitted += "".join(f"\n- {t}: constant {c!r} (one class)" for t, c in full.constant.items())
    print(fitted)
    cfg = GRIDS.get(args.grid)
    md = [f"# MD tree on an own model family (`{args.grid}` grid)", "",
          f"Command: `python benchmarks/bench_mdtree_population.py --out {args.out} --markdown ...`; "
          f"machine: {C.cpu_model()}, 2-core shared VM, torch threads 1.", "",
          f"Grid: widths {list(cfg.widths)} (VGG, {cfg.arch}), batch sizes {list(cfg.batch_sizes)}, digits "
          f"fractions {list(cfg.data_fractions)}, seeds {list(cfg.seeds)}; {cfg.epochs} epochs SGD lr {cfg.lr}, "
          f"Bezier {cfg.curve_epochs} epochs, Hessian {cfg.hessian_iters} iterations on {cfg.hessian_samples} "
          "samples, CKA on mixup inputs.", "",
          f"Population wall time: {wall:.1f} s this run ({pop.attrs['n_trained']} configurations trained, "
          f"{pop.attrs['n_resumed']} resumed); sum of stored per-configuration times {stored_s:.1f} s "
          f"({len(pop)} configurations). Held-out evaluation {eval_s:.1f} s.", "",
          "Held-out accuracy (%), leave-one-(width, data)-pair-out, labels from the whole grid, `optimal` "
          "rows dropped:", "", table, "", "Trees fitted on the whole population:", "", fitted, "",
          "Population (mean over seeds):", "", "```", pop[cols].round(3).to_string(index=False), "```", ""]
    if args.markdown:
        from htsr.io import atomic_write

        atomic_write(args.markdown, lambda p: p.write_text("\n".join(md)))
    if args.json:
        from htsr.io import write_json

        write_json(args.json, {"wall_s": wall, "stored_s": stored_s, "results": results})


if __name__ == "__main__":
    main()
