"""``htsr regimes``: the three-regime model of pruning (temperature x density phase diagrams).

* ``htsr regimes sweep --preset cpu --out-dir DIR``: dense training at each temperature, pruning to each density,
  retraining with the mask fixed, mc/CKA/test error per cell (resumable: run the same command again); writes
  ``results.csv`` (one row per seed x temperature x density), ``phase.csv`` (means, regimes, advice),
  ``summary.json`` and the heat maps under ``plots/``.
* ``htsr regimes classify RESULTS``: the regime of each (temperature, density) cell (``--fit`` fits the cut-offs).
* ``htsr regimes plot RESULTS --out-dir DIR``: the heat maps (PNG).
* ``htsr regimes advise RESULTS``: raise / lower / keep the temperature per cell, how often that lowered the test
  error (case study 1), and the sharp-transition check.

``RESULTS`` is a ``results.csv`` written by ``sweep`` (or its directory). Cut-offs: ``--set mc_threshold=-0.02
--set cka_threshold=0.95 --set cka_column=cka_softmax``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from htsr.cli import common as C
from htsr.io import prepare_run_dir

PRESET_NAMES = ("cpu", "paper")
KNOB_NAMES = ("epochs", "batch_size", "sam_rho")


def register(subparsers: Any) -> None:
    """Add ``regimes`` with its ``sweep``, ``classify``, ``plot`` and ``advise`` sub-commands."""
    p = subparsers.add_parser(
        "regimes", help="three-regime model of pruning: temperature x density phase diagrams and advice",
        description="Prune and retrain networks over a grid of dense-training temperatures (epochs, batch size, "
                    "SAM rho) and densities; place each cell in regime I / II-A / II-B from mode connectivity and "
                    "CKA between retrained copies (Zhou et al., ICML 2023) and say whether to raise or lower the "
                    "temperature.")
    sub = p.add_subparsers(dest="regimes_command", required=True, metavar="COMMAND")

    s = sub.add_parser("sweep", help="run (or resume) a temperature x density sweep",
                       description="Dense training, one-shot magnitude pruning and retraining with the mask fixed "
                                   "for every seed x temperature x density; resumable (run the same command again).")
    s.add_argument("--preset", choices=PRESET_NAMES, default="cpu",
                   help="cpu (this machine, ~30 min on one core) or paper (PreResNet-20, 160 epochs, a GPU); "
                        "default cpu")
    s.add_argument("--knob", choices=KNOB_NAMES, default=None, help="temperature knob (default: the preset's, epochs)")
    s.add_argument("--temperatures", type=C.float_list, default=None, metavar="T[,T...]",
                   help="knob values (>= 2; epochs and batch sizes are integers)")
    s.add_argument("--densities", type=C.float_list, default=None, metavar="D[,D...]",
                   help="fractions of prunable weights kept, each in (0, 1]")
    s.add_argument("--seeds", type=C.int_list, default=None, metavar="S[,S...]", help="dense training seeds")
    s.add_argument("--scope", choices=("uniform", "global"), default=None,
                   help="uniform: one density per layer; global: one magnitude threshold (default uniform)")
    s.add_argument("--max-cells", type=C.nonneg_int, default=None, metavar="N",
                   help="run at most N of the remaining cells (a time box; run again to continue)")
    C.add_set(s, "the sweep configuration (e.g. --set retrain_epochs=10)")
    s.add_argument("--data", metavar="DIR", default=None,
                   help="directory of the four Fashion-MNIST IDX files (default: $HTSR_FASHION_MNIST or "
                        "/usr/share/datasets/fashion-mnist)")
    C.add_threads(s)
    C.add_device(s)
    C.add_executor(s)
    C.add_progress(s)
    C.add_json(s)
    C.add_out_dir(s, "results directory (results.csv, phase.csv, summary.json, plots/, dense/, cells/); an "
                     "existing one of the same configuration is resumed")
    s.set_defaults(func=cmd_sweep)

    def table_input(q: argparse.ArgumentParser) -> None:
        q.add_argument("results", metavar="RESULTS", help="results.csv written by 'htsr regimes sweep', or its "
                                                            "directory")
        q.add_argument("--knob", choices=KNOB_NAMES, default=None,
                       help="temperature knob (default: the table's knob column)")
        C.add_set(q, "the regime cut-offs (mc_threshold, cka_threshold, cka_column)")
        q.add_argument("--fit", action="store_true",
                       help="fit the cut-offs to this table (Otsu's split of mc, then of CKA) instead of the defaults")

    c = sub.add_parser("classify", help="the regime of each (temperature, density) cell",
                       description="Mean over seeds per cell, normalised test error and regime (I, II-A, II-B).")
    table_input(c)
    C.add_out(c, (".csv", ".json"), "write the phase table")
    C.add_json(c)
    c.set_defaults(func=cmd_classify)

    pl = sub.add_parser("plot", help="heat maps of mc, CKA, test error and regime",
                        description="Write one PNG per quantity and phase.png with all of them.")
    table_input(pl)
    C.add_out_dir(pl, "directory for the PNG files")
    pl.set_defaults(func=cmd_plot)

    a = sub.add_parser("advise", help="raise / lower the temperature per cell, and how often that helped",
                       description="The advice of each cell's regime (I: raise the temperature, II-A: lower it, "
                                   "II-B: keep it), checked against the neighbouring temperature of the grid "
                                   "(case study 1), and the sharp-transition check per density.")
    table_input(a)
    C.add_out(a, (".csv", ".json"), "write the advice: .csv one row per cell, .json everything")
    C.add_json(a)
    a.set_defaults(func=cmd_advise)


# ----------------------------------------------------------------------------------- helpers
def read_results(path: str) -> Any:
    """The results table at ``path`` (a CSV file or a sweep directory holding results.csv)."""
    import pandas as pd

    from htsr.errors import SourceError

    p = Path(path)
    if p.is_dir():
        p = p / "results.csv"
    if not p.is_file():
        raise SourceError(f"{p}: no such results table (give a results.csv written by 'htsr regimes sweep' or its "
                          "directory)")
    try:
        return pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise SourceError(f"{p} is empty; expected a results table") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{p} is not a CSV results table ({type(e).__name__})") from None


def _cutoffs(args: argparse.Namespace, table: Any) -> Any:
    """The cut-offs ``--set`` asks for (checked before the table), or fitted to ``table`` with ``--fit``."""
    from htsr.regimes.classify import aggregate, fit_cutoffs
    from htsr.regimes.config import Cutoffs

    over = C.overrides(args)
    base = Cutoffs.from_dict(over)
    if args.fit:
        fitted = fit_cutoffs(aggregate(table, args.knob), base.cka_column)
        return fitted.replace(**{k: v for k, v in over.items() if k != "cka_column"})
    return base


def analyse(table: Any, cutoffs: Any = None, knob: str | None = None, fit: bool = False) -> dict[str, Any]:
    """Everything the table says: the advised phase table, cut-offs, regime counts, case study 1 and the
    transition check."""
    from htsr.regimes.classify import (
        advise,
        aggregate,
        case_study,
        fit_cutoffs,
        regime_counts,
        transition,
        transition_verdict,
    )

    agg = aggregate(table, knob)
    if fit:
        cutoffs = fit_cutoffs(agg, cutoffs.cka_column if cutoffs is not None else "cka")
    advised = advise(agg, cutoffs, knob)
    trans = transition(agg)
    return {"phase": advised, "cutoffs": (cutoffs.to_dict() if cutoffs is not None else None),
            "regimes": regime_counts(advised), "case_study_1": case_study(advised),
            "transition": trans, "transition_verdict": transition_verdict(trans)}


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    return {"cutoffs": res["cutoffs"], "regimes": res["regimes"], "case_study_1": res["case_study_1"],
            "transition": res["transition"].to_dict(orient="records"),
            "transition_verdict": res["transition_verdict"]}


SHOWN = ["temperature", "density", "mc", "cka", "test_error", "normalised_error", "regime"]


def _print_phase(df: Any, extra: list[str] = ()) -> None:
    cols = [c for c in SHOWN + list(extra) if c in df.columns]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


# ----------------------------------------------------------------------------------- commands
def cmd_sweep(args: argparse.Namespace) -> int:
    from htsr.errors import MeasurementError
    from htsr.io import write_json, write_table
    from htsr.regimes.config import preset_config
    from htsr.regimes.pipeline import sweep

    over = dict(C.overrides(args))
    for name in ("knob", "temperatures", "densities", "seeds", "scope"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    if args.data is not None:
        over["data_dir"] = args.data
    if args.threads is not None:
        over["threads"] = args.threads
    if args.device == "auto":
        import torch

        over["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.preset != "paper" or args.device != "cpu":
        over["device"] = args.device
    if over.get("knob") and over["knob"] != "epochs" and "temperatures" not in over:
        from htsr.errors import ConfigError

        raise ConfigError(f"--knob {over['knob']} needs --temperatures (the preset's are epochs)")
    cfg = preset_config(args.preset, over)
    from htsr.regimes.pipeline import load_data

    load_data(cfg)  # missing data is a usage error now, not a failed cell later
    out = Path(args.out_dir)
    executor = C.executor_from_args(args)
    try:
        resumed = prepare_run_dir(out, cfg.identity(), "sweep.json", overwrite=args.overwrite)
        if resumed:
            from htsr.experiments import ResultStore

            C.say(f"resuming {out} ({len(ResultStore(out))} cell(s) recorded)")
        table = sweep(cfg, out, executor=executor, progress=args.progress, max_cells=args.max_cells)
    finally:
        executor.close()
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    ok = ok[ok["temperature"].isin(cfg.temperatures) & ok["density"].isin(cfg.densities) & ok["seed"].isin(cfg.seeds)]
    failed = int((table["status"] != "ok").sum()) if "status" in table.columns else 0
    done = len(ok) == len(cfg.temperatures) * len(cfg.densities) * len(cfg.seeds)
    info: dict[str, Any] = {"resume_key": cfg.identity(), "status": "done" if done else "partial",
                            "config": cfg.to_dict(), "cells_ok": int(len(ok)), "cells_failed": failed}
    if ok.empty:
        write_json(out / "sweep.json", info)
        if args.max_cells == 0:
            C.say("no cell run (--max-cells 0)")
            return 0
        raise MeasurementError(f"every cell of the sweep failed; see {out / 'results.csv'} and {out / 'cells'}")
    if ok["temperature"].nunique() >= 2:
        from htsr.regimes.plots import phase_diagrams

        res = analyse(ok, knob=cfg.knob)
        write_table(out / "phase.csv", res["phase"])
        write_json(out / "summary.json", _summary(res))
        phase_diagrams(res["phase"], out / "plots", title=f"Fashion-MNIST, PreResNet-{cfg.depth} w{cfg.width}, "
                                                          f"{len(set(ok['seed']))} seed(s), preset {args.preset}")
        info["summary"] = _summary(res)
    write_json(out / "sweep.json", info)
    if args.json:
        C.print_json(info)
    else:
        if "summary" in info:
            _print_phase(res["phase"], ["advice"])
            cs = res["case_study_1"]
            C.say(f"case study 1: the advised move lowered the test error in {cs['n_lowered']}/{cs['n_checked']} "
                  f"cells; transition: {res['transition_verdict']['transition']}")
        C.say(f"wrote {out} ({len(ok)} cell(s) ok, {failed} failed{'' if done else ', sweep not finished'})")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from htsr.io import check_not_input
    from htsr.regimes.classify import aggregate, classify

    if args.out:
        check_not_input(args.out, [args.results])
    table = read_results(args.results)
    cut = _cutoffs(args, table)
    df = classify(aggregate(table, args.knob), cut)
    if args.out:
        C.write_out(args.out, df, {"cutoffs": cut.to_dict(), "phase": df.to_dict(orient="records")})
    if args.json:
        C.print_json({"cutoffs": cut.to_dict(), "phase": df.to_dict(orient="records")})
    else:
        C.say(f"cut-offs: mc < {cut.mc_threshold:g} -> I; else {cut.cka_column} < {cut.cka_threshold:g} -> II-A; "
              "else II-B")
        _print_phase(df)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from htsr.io import replace_dir
    from htsr.regimes.classify import aggregate, classify
    from htsr.regimes.plots import phase_diagrams

    table = read_results(args.results)
    cut = _cutoffs(args, table)
    df = classify(aggregate(table, args.knob), cut)
    paths: list[Path] = []
    replace_dir(args.out_dir, lambda tmp: paths.extend(phase_diagrams(df, tmp)), overwrite=args.overwrite,
                inputs=[args.results])
    C.say(f"wrote {len(paths)} PNG file(s) to {args.out_dir}")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from htsr.io import check_not_input

    if args.out:
        check_not_input(args.out, [args.results])
    table = read_results(args.results)
    res = analyse(table, _cutoffs(args, table), args.knob)
    summary = _summary(res)
    if args.out:
        C.write_out(args.out, res["phase"], {**summary, "phase": res["phase"].to_dict(orient="records")})
    if args.json:
        C.print_json({**summary, "phase": res["phase"].to_dict(orient="records")})
        return 0
    _print_phase(res["phase"], ["advice", "next_temperature", "error_change"])
    cs = res["case_study_1"]
    frac = cs["fraction_lowered"]
    C.say(f"case study 1: moving the temperature as advised lowered the test error in {cs['n_lowered']} of "
          f"{cs['n_checked']} checked cells" + (f" ({frac:.0%})" if cs["n_checked"] else "")
          + f"; the opposite move in {cs['opposite_n_lowered']} of {cs['opposite_n_checked']}")
    v = res["transition_verdict"]
    C.say(f"sharp transition (hotter helps at the lowest density, hurts at the highest): {v['transition']}")
    return 0
