"""Markdown tables of an ``htsr lora train`` results directory (issue 16): accuracy per task and variant (mean ± std
over seeds), the paired difference to each variant's baseline per task and pooled over tasks, wall time, and the
per-block allocation.

    python benchmarks/lora_report.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from htsr.lora.train import BASELINE, summarize

ORDER = ["uniform", "mola_increasing", "mola_decreasing", "alphalora", "lora_uniform", "lora_alpha"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    a = ap.parse_args()
    d = Path(a.run_dir)
    t = pd.read_csv(d / "results.csv")
    t = t[t["status"] == "ok"]
    variants = [v for v in ORDER if v in set(t["variant"])]
    s = summarize(t, variants)
    tasks = list(dict.fromkeys(s["task"]))
    print("| task | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for task in tasks:
        cells = []
        for v in variants:
            r = s[(s["task"] == task) & (s["variant"] == v)]
            cells.append("" if r.empty else f"{100 * r.accuracy_mean.iloc[0]:.1f} ± {100 * r.accuracy_std.iloc[0]:.1f}")
        print(f"| {task} | " + " | ".join(cells) + " |")
    print()
    print("| variant − baseline (points) | " + " | ".join(tasks) + " | pooled (mean ± std, wins/ties/losses) |")
    print("|---|" + "---|" * (len(tasks) + 1))
    for v in variants:
        base = BASELINE.get(v)
        if base is None:
            continue
        cells, diffs = [], []
        for task in tasks:
            a_ = t[(t.task == task) & (t.variant == v)].set_index("seed")["accuracy"]
            b_ = t[(t.task == task) & (t.variant == base)].set_index("seed")["accuracy"]
            common = a_.index.intersection(b_.index)
            dd = 100 * (a_[common] - b_[common])
            diffs += dd.tolist()
            cells.append(f"{dd.mean():+.1f} ± {dd.std(ddof=1):.1f} (n={dd.size})")
        x = np.array(diffs)
        cells.append(f"{x.mean():+.1f} ± {x.std(ddof=1):.1f}, {int((x > 0).sum())}/{int((x == 0).sum())}/"
                     f"{int((x < 0).sum())}")
        print(f"| {v} − {base} | " + " | ".join(cells) + " |")
    print()
    w = t.groupby("variant")[["train_s", "eval_s", "wall_s", "trainable_params"]].mean().reindex(variants)
    print("| variant | train s (mean) | eval s | cell wall s | trainable parameters |")
    print("|---|---|---|---|---|")
    for v, r in w.iterrows():
        print(f"| {v} | {r.train_s:.1f} | {r.eval_s:.1f} | {r.wall_s:.1f} | {int(r.trainable_params):,} |")
    print(f"\ncells: {len(t)}, total cell wall time {t['wall_s'].sum() / 60:.1f} min")
    # per-block allocation (the same for every task and seed)
    cells_dir = d / "cells"
    print("\n| variant | per-block experts (MoE) or ranks (plain LoRA), blocks 0-5 |")
    print("|---|---|")
    alpha = None
    for v in variants:
        for f in sorted(cells_dir.glob(f"*variant={v}.json")):
            doc = json.loads(f.read_text())
            al = doc.get("details", doc).get("allocation") if isinstance(doc, dict) else None
            if al is None:
                continue
            alpha = al["alpha"]
            print(f"| {v} | {al.get('experts') or al.get('ranks')} |")
            break
    if alpha is not None:
        print(f"\nblock mean alpha: {[round(x, 3) for x in alpha]}")


if __name__ == "__main__":
    main()
