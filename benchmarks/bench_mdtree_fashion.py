"""MD tree on a real population: Fashion-MNIST, 96 configurations x 2 seeds, Table B's protocol within it.

(a) ``htsr mdtree population --grid fashion`` (resumable; run it first, any executor): 4 widths x 6 batch sizes
    x 4 data fractions of a 2,000-image stratified Fashion-MNIST pool (28x28), 2 seeds each, every
    configuration measured (train error, Bezier peak between the seeds, ln Hessian trace, CKA).
(b) Table B's protocol on it. The paper fits on one population F and tests on another, F' (label noise); with
    one population here, each training subset is drawn exactly as the paper draws it and the test set is the
    rest of the population (no configuration is both fitted and scored):

    * ``random``: k = 8 of the 16 (data, width) pairs, each with all its batch sizes (the paper's case 1 draws
      k = 8 pairs too), the paper's 5 seeds {42, 90, 38, 18, 72};
    * ``data_limit``: fitted on data fractions <= 0.25 of the pool, tested on 0.5 and 1 (scale transfer, case 2);
    * ``width_limit``: fitted on widths <= 2, tested on 4 and 8 (scale transfer, case 3).

    Labels (room for improvement of test accuracy) from the whole grid, ``optimal`` rows dropped. Methods: the
    MD tree of the task (thresholds searched over the training subset's observed feature ranges, as
    ``fit_diagnoser``), the paper's baselines Validation+DT (depth-4 tree on train/test error and loss) and
    Hyper+DT (log #data, log #params; Q2 one of them), and the training subset's majority class.

(c) with ``--noisy DIR`` (``htsr mdtree population --grid fashion-noisy``: the same grid with 10 % of the training
    labels replaced, the paper's F'), Table B's own protocol too: each subset of F fitted, all of F' scored.

    python benchmarks/bench_mdtree_fashion.py --population /tmp/htsr_fashion_pop --noisy /tmp/htsr_fashion_noisy \\
        --markdown benchmarks/outputs/mdtree_fashion.md --csv benchmarks/outputs/mdtree_fashion_population.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import _common as C

#: task -> (label column, MD tree class name, Hyper+DT features)
TASKS = {"temperature": ("bs_failure", "MDTreeTemperature", ("log_data_amount", "log_para_amount")),
         "width": ("width_vs_batch", "MDTreeWidthBatch", ("log_para_amount",)),
         "data": ("data_vs_batch", "MDTreeDataBatch", ("log_data_amount",))}
SEEDS = (42, 90, 38, 18, 72)


def splits(rows: pd.DataFrame, scheme: str, k: float, seed: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training subset drawn as the paper draws it, the rest of the population)."""
    from htsr.diagnosis.transfer import sample_training_set

    train = sample_training_set(rows, scheme, k, seed)
    return train, rows.drop(index=train.index)


def score(task: str, train: pd.DataFrame, test: pd.DataFrame, seed: int) -> dict[str, float]:
    """Accuracy (fraction) of each method fitted on ``train``, scored on ``test``."""
    from htsr.diagnosis import mdtree as M
    from htsr.diagnosis.diagnoser import auto_bounds

    label, tree_name, hyper = TASKS[task]
    y_tr, y_te = train[label].to_numpy(), test[label].to_numpy()
    majority = pd.Series(y_tr).mode().iloc[0]
    out = {"majority": float(np.mean(y_te == majority))}
    if len(set(y_tr)) < 2:  # one class to learn from: every method predicts it
        for m in ("md_tree", "validation_dt", "hyper_dt"):
            out[m] = out["majority"]
        return out
    tree_cls = getattr(M, tree_name)
    tree = tree_cls(bounds=auto_bounds(tree_cls, train)).fit(train, y_tr)
    out["md_tree"] = float(tree.score(test, y_te))
    out["validation_dt"] = float(M.validation_tree(random_state=seed).fit(train, y_tr).score(test, y_te))
    out["hyper_dt"] = float(M.hyperparameter_tree(hyper, random_state=seed).fit(train, y_tr).score(test, y_te))
    return out


def evaluate(labelled: pd.DataFrame, test_population: pd.DataFrame | None = None) -> list[dict]:
    """Accuracy of every method per task and protocol. Without ``test_population``: fitted on the subset, scored
    on the rest of ``labelled``; with it (Table B's dataset transfer F -> F'): fitted on the subset of
    ``labelled`` (F), scored on all of ``test_population`` (F', labelled on its own grid)."""
    from htsr.diagnosis.errors import DiagnosisError
    from htsr.diagnosis.labels import drop_optimal

    results = []
    for task, (label, _, _) in TASKS.items():
        rows = drop_optimal(labelled, label)
        other = None if test_population is None else drop_optimal(test_population, label)
        half = max(1, len(rows.groupby(["data", "width"])) // 2)  # 8 of the full grid's 16 pairs
        for scheme, k, seeds in (("random", half, SEEDS), ("data_limit", 0.25, (None,)), ("width_limit", 2, (None,))):
            per = []
            for seed in seeds:
                try:
                    train, test = splits(rows, scheme, k, seed)
                except DiagnosisError:
                    continue
                if other is not None:
                    test = other
                if len(test) == 0 or len(train) == 0:
                    continue
                per.append((len(train), len(test), score(task, train, test, 0 if seed is None else seed)))
            if not per:
                continue
            r = {"task": task, "scheme": scheme, "k": k, "seeds": len(per),
                 "n_train": float(np.mean([p[0] for p in per])), "n_test": float(np.mean([p[1] for p in per]))}
            for m in ("md_tree", "validation_dt", "hyper_dt", "majority"):
                acc = [100.0 * p[2][m] for p in per]
                r[m] = float(np.mean(acc))
                r[f"{m}_std"] = float(np.std(acc, ddof=1)) if len(acc) > 1 else float("nan")
            results.append(r)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", required=True, help="folder of `htsr mdtree population --grid fashion`")
    ap.add_argument("--noisy", default=None, metavar="DIR",
                    help="a population of the same grid with label noise (--grid fashion-noisy): also report Table "
                         "B's dataset transfer, fitted on --population's subsets, tested on all of DIR")
    ap.add_argument("--markdown", default=None, help="write the tables (Markdown) here")
    ap.add_argument("--csv", default=None, help="copy the population CSV (one row per configuration) here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from htsr.diagnosis.labels import label_population
    from htsr.diagnosis.own_population import load_population_dir

    info = C.announce_machine()
    frame, config = load_population_dir(args.population)
    labelled = label_population(frame)
    results = evaluate(labelled)
    transfer = []
    if args.noisy:
        noisy_frame, noisy_config = load_population_dir(args.noisy)
        noisy = label_population(noisy_frame)
        transfer = evaluate(labelled, noisy)
    lines = [f"Population: {len(frame)}/{config.n_configs} configurations x {len(config.seeds)} seeds, recipe "
             f"{config.recipe_id()} ({config.dataset}, pool {config.pool}, {config.epochs} epochs, widths "
             f"{list(config.widths)}, batch sizes {list(config.batch_sizes)}, fractions "
             f"{list(config.data_fractions)}); sum of per-configuration times {frame['train_s'].sum():.0f} s.",
             "", "Labels (whole grid): " + "; ".join(
                 f"{t}: " + ", ".join(f"{k} {v}" for k, v in sorted(labelled[lab].value_counts().items()))
                 for t, (lab, _, _) in TASKS.items()), "",
             "| task | protocol | seeds | train rows | test rows | MD tree | Validation+DT | Hyper+DT | majority |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(r: dict, m: str) -> str:
        s = r[f"{m}_std"]
        return f"{r[m]:.1f}" + ("" if not np.isfinite(s) else f" ± {s:.1f}")

    def table(rs: list[dict]) -> None:
        for r in rs:
            proto = {"random": f"random {r['k']} (data, width) pairs", "data_limit": "data <= 0.25 (scale)",
                     "width_limit": "width <= 2 (scale)"}[r["scheme"]]
            lines.append(f"| {r['task']} | {proto} | {r['seeds']} | {r['n_train']:.1f} | {r['n_test']:.1f} | "
                         f"{cell(r, 'md_tree')} | {cell(r, 'validation_dt')} | {cell(r, 'hyper_dt')} | "
                         f"{cell(r, 'majority')} |")

    table(results)
    if args.noisy:
        lines += ["", f"Dataset transfer (Table B): fitted on subsets of the population above (F), tested on all of "
                      f"{len(noisy_frame)} configurations with {noisy_config.label_noise:.0%} label noise (F', recipe "
                      f"{noisy_config.recipe_id()}, labelled on its own grid).", "",
                  "Labels of F': " + "; ".join(
                      f"{t}: " + ", ".join(f"{k} {v}" for k, v in sorted(noisy[lab].value_counts().items()))
                      for t, (lab, _, _) in TASKS.items()), "",
                  "| task | training subset of F | seeds | train rows | test rows (F') | MD tree | Validation+DT | "
                  "Hyper+DT | majority |", "|---|---|---|---|---|---|---|---|---|"]
        table(transfer)
    cols = ["width", "bs", "data", "data_amount", "test_acc", "test_acc_std", "train_error", "mode_connectivity_peak",
            "hessian_t", "CKA", "train_s"]
    text = "\n".join(lines)
    print(text)
    print()
    print(frame[[c for c in cols if c in frame]].round(3).to_string(index=False))
    if args.markdown:
        from htsr.io import atomic_write

        atomic_write(args.markdown, lambda tmp: tmp.write_text(text + "\n"))
    if args.csv:
        from htsr.io import write_table

        write_table(args.csv, labelled)
    C.write_json(args.json, {"machine": info, "results": results, "transfer": transfer,
                             "recipe_id": config.recipe_id()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
