"""Tables and diagrams of a three-regime sweep for docs/regimes.md and docs/benchmarks.md.

    htsr regimes sweep --preset cpu --threads 1 --out-dir RUN
    python benchmarks/bench_regimes.py RUN --img docs/img --md regimes_tables.md

Prints markdown: the phase table with default and fitted cut-offs, case study 1, the transition check; copies the
heat maps (drawn with the fitted cut-offs) to ``--img`` as ``regimes_<panel>.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from htsr.regimes.classify import (
    advise,
    aggregate,
    case_study,
    fit_cutoffs,
    regime_counts,
    transition,
    transition_verdict,
)
from htsr.regimes.config import Cutoffs
from htsr.regimes.plots import phase_diagrams


def md_table(df, cols, fmt):
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    rows = []
    for _, r in df.iterrows():
        rows.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cols) + " |")
    return head + "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--img", default=None)
    ap.add_argument("--md", default=None)
    a = ap.parse_args()
    import pandas as pd

    table = pd.read_csv(Path(a.run) / "results.csv")
    agg = aggregate(table)
    out = []
    fitted = fit_cutoffs(agg)
    for name, cut in (("fitted", fitted), ("default", Cutoffs())):
        adv = advise(agg, cut)
        cs = case_study(adv)
        out.append(f"### cut-offs {name}: mc < {cut.mc_threshold:.4f} -> I; cka < {cut.cka_threshold:.4f} -> II-A\n")
        out.append(md_table(adv, ["temperature", "density", "mc", "cka", "test_error", "test_error_sd",
                                  "normalised_error", "regime", "advice", "error_change"],
                            {"mc": "{:+.3f}", "cka": "{:.3f}", "test_error": "{:.3f}", "test_error_sd": "{:.3f}",
                             "normalised_error": "{:.3f}", "error_change": "{:+.3f}", "temperature": "{:g}",
                             "density": "{:g}"}))
        out.append(f"regimes: {regime_counts(adv)}\n\ncase study 1: {json.dumps(cs)}\n")
        if name == "fitted" and a.img:
            tmp = Path(a.run) / "plots_fitted"
            for p in phase_diagrams(adv, tmp, title=f"Fashion-MNIST, PreResNet-8 w8, 2 seeds, cpu preset; "
                                                    f"fitted cut-offs mc {cut.mc_threshold:.3f}, "
                                                    f"CKA {cut.cka_threshold:.3f}"):
                dst = Path(a.img) / f"regimes_{p.name}"
                dst.write_bytes(p.read_bytes())
    tr = transition(agg)
    out.append(md_table(tr, ["density", "best_temperature", "hot_minus_cold", "spearman_heat_error"],
                        {"best_temperature": "{:g}", "hot_minus_cold": "{:+.3f}", "spearman_heat_error": "{:+.2f}",
                         "density": "{:g}"}))
    out.append(f"transition verdict: {json.dumps(transition_verdict(tr))}\n")
    dense = table.groupby(["seed", "temperature"])["dense_test_error"].first().groupby("temperature").mean()
    out.append("dense test error by temperature (mean over seeds): "
               + ", ".join(f"{t:g}: {e:.3f}" for t, e in dense.items()) + "\n")
    out.append(f"cell wall time: mean {table['wall_s'].mean():.1f} s, total {table['wall_s'].sum():.0f} s\n")
    text = "\n".join(out)
    print(text)
    if a.md:
        Path(a.md).write_text(text)


if __name__ == "__main__":
    main()
