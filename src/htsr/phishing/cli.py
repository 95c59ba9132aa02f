"""``htsr phish``: the neural-phishing attack (Panda et al., ICLR 2024) on a Hugging Face causal LM, its sweep, and
a defence check by TinyMem unlearning.

* ``htsr phish run --preset cpu --seed 0 --out-dir DIR [--model HF_DIR] [-o run.json|run.csv] [--json]``: plant
  random secrets and poisons, fine-tune through the phases, attack after each of the last steps; ``DIR`` holds
  ``run.json``, ``attacks.csv`` and (without ``--model``) the small GPT-2 pretrained here on the KJV
  (``DIR/pretrained``, reused when present).
* ``htsr phish sweep --preset cpu --poisons 0,10,25,50 --duplication 1,2,4 --secret-len 4,6,10 --gap 0,10,40
  --seeds 0,1,2 --out-dir DIR [-o summary.csv] [--plot ser.png] [--executor ray]``: SER per factor value (one
  factor at a time around the preset), resumable.
* ``htsr phish defend --preset cpu --seed 0 --out-dir DIR [--methods balanced_subnet,durable,activations]
  [-o defend.csv]``: one run, then each unlearning method on a copy of the phished model (forget set: the
  extracted secrets); SER and clean perplexity before and after.

Exit codes (``htsr.cli.main``): 0 ran, 1 the measurement failed (e.g. nothing extracted to defend against),
2 bad usage or input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from htsr.cli import common as C
from htsr.io import prepare_run_dir

PRESET_NAMES = ("tiny", "cpu", "paper")


def register(subparsers: Any) -> None:
    """Add ``phish`` with its ``run``, ``sweep`` and ``defend`` sub-commands."""
    from htsr.memorization.config import UNLEARNING
    from htsr.phishing.sweep import FACTORS  # noqa: F401  (cheap: no torch)

    p = subparsers.add_parser("phish", help="neural phishing: plant, fine-tune and extract secrets; defend",
                              description="Neural phishing (Teach LLMs to Phish, ICLR 2024) on a Hugging Face "
                                          "causal LM: poisons, random digit secrets, the training phases, greedy "
                                          "extraction and the secret extraction rate (SER); a defence check with "
                                          "TinyMem unlearning.")
    sub = p.add_subparsers(dest="phish_command", required=True, metavar="COMMAND")

    def shared(q: argparse.ArgumentParser) -> None:
        q.add_argument("--preset", choices=PRESET_NAMES, default="cpu",
                       help="tiny (tests, seconds), cpu (this machine, a GPT-2-style LM pretrained here), paper "
                            "(the reference's settings; needs --model, a local Pythia directory, and a GPU) "
                            "(default cpu)")
        C.add_set(q, "the phishing run (e.g. --set num_secrets=4 --set attack=randompoison)")
        q.add_argument("--model", metavar="HF_DIR", default=None,
                       help="a local Hugging Face causal-LM directory (its tokenizer, or bytes when it ships "
                            "none); default: the small GPT-2 pretrained here, cached in OUT_DIR/pretrained")
        q.add_argument("--device", type=C.device, default=None,
                       help="cpu, cuda, cuda:N or auto (default: the preset's: cpu, paper: cuda)")
        C.add_threads(q)
        C.add_progress(q)
        C.add_json(q)

    r = sub.add_parser("run", help="one phishing run: plant, fine-tune, attack",
                       description="Plant random secrets and poisons, fine-tune through the phases and attack "
                                   "after each of the last steps.")
    C.add_seed(r)
    shared(r)
    C.add_out_dir(r, "run directory (run.json, attacks.csv, pretrained/ when --model is not given)")
    C.add_out(r, (".json", ".csv"), "also write the result: .json everything, .csv one row per attack step")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("sweep", help="SER against poisons, duplication, secret length and gap, over seeds",
                       description="One factor at a time around the preset (or --design full), each value over "
                                   "the seeds; resumable: re-run the same command to continue.")
    s.add_argument("--poisons", type=C.int_list, default=None, metavar="N[,N...]", help="numbers of poison steps")
    s.add_argument("--duplication", type=C.int_list, default=None, metavar="K[,K...]",
                   help="times each secret is seen")
    s.add_argument("--secret-len", type=C.int_list, default=None, metavar="D[,D...]", help="secret lengths (digits)")
    s.add_argument("--gap", type=C.int_list, default=None, metavar="G[,G...]",
                   help="clean steps between poisons and secrets")
    s.add_argument("--seeds", type=C.int_list, default=[0, 1, 2], metavar="S[,S...]", help="default 0,1,2")
    s.add_argument("--design", choices=("oat", "full"), default="oat",
                   help="oat: one factor at a time around the preset (default); full: every combination")
    shared(s)
    C.add_executor(s)
    C.add_out_dir(s, "results directory (results.csv, cells/, summary.csv, points.csv, pretrained/); an existing "
                     "one of the same configuration is resumed")
    C.add_out(s, (".csv", ".json"), "also write the summary (SER with Wilson bounds per factor value)")
    C.add_plot(s, "SER against each factor, with 95%% Wilson intervals (PNG)")
    s.set_defaults(func=cmd_sweep)

    d = sub.add_parser("defend", help="one run, then TinyMem unlearning of the extracted secrets",
                       description="Run the attack, then each unlearning method on a copy of the phished model "
                                   "with the extracted secrets as the forget set; SER and clean perplexity "
                                   "before and after.")
    C.add_seed(d)
    d.add_argument("--methods", type=C.choice_list(UNLEARNING.names()), default=None, metavar="M[,M...]",
                   help="unlearning methods (default balanced_subnet,durable,activations)")
    d.add_argument("--forget", choices=("extracted", "all"), default="extracted",
                   help="forget set: the extracted secrets (default) or every planted secret")
    shared(d)
    C.add_out_dir(d, "directory (defend.json, run.json, pretrained/ when --model is not given)")
    C.add_out(d, (".json", ".csv"), "also write the defence: .json everything, .csv one row per method")
    d.set_defaults(func=cmd_defend)


# ----------------------------------------------------------------------------------- helpers
def _config(args: argparse.Namespace):
    from htsr.phishing.config import PhishingError, preset

    over = dict(C.overrides(args))
    if args.device == "auto":
        import torch

        over["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device is not None:
        over["device"] = args.device
    cfg, pre = preset(args.preset, over)
    if pre is None and args.model is None:
        raise PhishingError(f"preset {args.preset} needs --model: a local Pythia (or other causal LM) directory; "
                            "nothing is downloaded")
    return cfg, pre


def _model(args: argparse.Namespace, pre, out: Path, device: str):
    from htsr.phishing.model import load_model, pretrain_small_lm

    if args.model is not None:
        from htsr.io import check_not_input

        check_not_input(out, [args.model])
        m, tok = load_model(args.model, device)
        return m, tok, {"model": str(args.model)}, Path(args.model)
    m, tok, info = pretrain_small_lm(pre, out / "pretrained", device=device, progress=args.progress)
    return m, tok, {"model": "pretrained here (GPT-2 config, bytes, KJV)", **info}, out / "pretrained"


def _attack_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"step": a["step"], "loss": a["loss"], "exact": a["exact"], "random": a["random"], "any": a["any"],
             "num_secrets": r["num_secrets"]} for a in r["attacks"]]


# ----------------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from htsr.io import write_json, write_table
    from htsr.phishing.attack import run_phish

    cfg, pre = _config(args)
    out = Path(args.out_dir)
    key = {"config": cfg.to_dict(), "seed": args.seed, "model": args.model,
           "pretrain": pre.to_dict() if pre else None}
    # a run is cheap to redo: always replaced (the pretrained cache stays)
    prepare_run_dir(out, key, "run.json", overwrite=True, keep=("pretrained",))
    model, tok, minfo, _ = _model(args, pre, out, cfg.device)
    r = run_phish(model, tok, cfg, args.seed, progress=args.progress)
    doc = {"resume_key": key, "status": "done", "model_info": minfo, **r}
    write_json(out / "run.json", doc)
    write_table(out / "attacks.csv", pd.DataFrame(_attack_rows(r)))
    if args.out:
        C.write_out(args.out, pd.DataFrame(_attack_rows(r)), doc)
    head = {k: r[k] for k in ("ser_exact", "ser_random", "ser_any", "ser_exact_last", "ser_random_last",
                              "ser_any_last", "num_secrets", "steps", "wall_s")}
    if args.json:
        C.print_json(head)
    else:
        for k, v in head.items():
            print(f"{k:<16} {v:.4f}" if isinstance(v, float) else f"{k:<16} {v}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from htsr.errors import ConfigError, MeasurementError
    from htsr.io import write_json, write_table
    from htsr.phishing.sweep import design, summarize, summarize_points, sweep

    cfg, pre = _config(args)
    if any(s < 0 for s in args.seeds):
        raise ConfigError(f"seeds must be >= 0, got {args.seeds}")
    axes = {"num_poisons": args.poisons, "duplication": args.duplication, "secret_len": args.secret_len,
            "gap": args.gap}
    axes = {k: sorted(set(v)) for k, v in axes.items() if v}
    cells = design(cfg, axes, sorted(set(args.seeds)), full=args.design == "full")
    executor = C.executor_from_args(args)
    out = Path(args.out_dir)
    key = {"config": cfg.to_dict(), "model": args.model, "pretrain": pre.to_dict() if pre else None}
    if prepare_run_dir(out, key, "sweep.json", overwrite=args.overwrite, keep=("pretrained",)):
        C.say(f"resuming {out}")
    _, _, minfo, model_dir = _model(args, pre, out, "cpu")
    table = sweep(model_dir, cfg, cells, out, executor=executor, progress=args.progress)
    keys = {c.key for c in cells}
    ok = table[table["key"].isin(keys) & (table["status"] == "ok")] if "status" in table.columns else table
    if ok.empty:
        raise MeasurementError(f"every cell of the sweep failed; see {out / 'results.csv'} and cells/*.json")
    summary = summarize(ok, cfg, axes)
    write_table(out / "summary.csv", summary)
    write_table(out / "points.csv", summarize_points(ok))
    write_json(out / "sweep.json", {"resume_key": key, "status": "done", "config": cfg.to_dict(), "axes": axes,
                                    "seeds": sorted(set(args.seeds)), "design": args.design, "model_info": minfo})
    if args.out:
        C.write_out(args.out, summary)
    if args.plot:
        from htsr.phishing.plots import plot_summary

        plot_summary(summary, args.plot, title=f"neural phishing, preset {args.preset}, {cfg.num_secrets} secrets, "
                                               f"seeds {','.join(map(str, sorted(set(args.seeds))))}")
        C.say(f"wrote {args.plot}")
    failed = int((table[table["key"].isin(keys)]["status"] != "ok").sum())
    if args.json:
        C.print_json({"summary": summary.to_dict(orient="records"), "failed_cells": failed})
    else:
        cols = ["factor", "value", "seeds", "ser_exact", "ser_random", "ser_any", "ser_any_lo", "ser_any_hi"]
        print(summary[cols].to_string(index=False, float_format="%.3f"))
        if failed:
            C.say(f"{failed} cell(s) failed; see {out / 'results.csv'}")
    return 0


def cmd_defend(args: argparse.Namespace) -> int:
    import pandas as pd

    from htsr.io import write_json
    from htsr.phishing.attack import run_phish
    from htsr.phishing.config import DefendConfig
    from htsr.phishing.defend import defend

    cfg, pre = _config(args)
    dcfg = DefendConfig.from_dict({"forget": args.forget, **({"methods": args.methods} if args.methods else {})})
    out = Path(args.out_dir)
    key = {"config": cfg.to_dict(), "defend": dcfg.to_dict(), "seed": args.seed, "model": args.model,
           "pretrain": pre.to_dict() if pre else None}
    prepare_run_dir(out, key, "defend.json", overwrite=True, keep=("pretrained",))
    model, tok, minfo, _ = _model(args, pre, out, cfg.device)
    r = run_phish(model, tok, cfg, args.seed, progress=args.progress)
    write_json(out / "run.json", {"model_info": minfo, **r})
    d = defend(model, tok, r, cfg, dcfg, args.seed, ppl_seqlen=pre.seqlen if pre else cfg.seqlen)
    doc = {"resume_key": key, "status": "done", "model_info": minfo, **d}
    write_json(out / "defend.json", doc)
    keep = ("ser_exact", "ser_random", "ser_any", "ppl")
    rows = [{"method": "none (phished)", **{k: d["before"][k] for k in keep}, "n_changed": 0}]
    rows += [{"method": m["method"], **{k: m[k] for k in keep}, "n_changed": m["n_changed"]} for m in d["methods"]]
    table = pd.DataFrame(rows)
    if args.out:
        C.write_out(args.out, table, doc)
    if args.json:
        C.print_json({"forget_secrets": d["forget_secrets"], "rows": rows})
    else:
        print(table.to_string(index=False, float_format="%.4f"))
    return 0
