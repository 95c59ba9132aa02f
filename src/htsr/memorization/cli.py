"""``htsr tinymem train|measure|mitigate|compare``: the TinyMem memorization test-bed and its 17 mitigations.

Exit codes: 0 ok, 1 failed run, 2 bad usage or input (nothing on disk is modified in place).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from htsr.cli.common import error, key_value, set_threads


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help="data size: cpu (default), tiny, paper")
    p.add_argument("--artifact", choices=["noise", "backdoor"], default="noise")
    p.add_argument("--task", choices=["increment", "mult"], default="increment")
    p.add_argument("--data", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="override a TinyMemConfig field, e.g. --data n_noise=200 --data prompt_len=16")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (1-64; default 2; the paper uses 1-16)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")


def register(subparsers: argparse._SubParsersAction) -> None:
    tm = subparsers.add_parser("tinymem", help="TinyMem memorization test-bed and mitigations",
                               description="Train small GPT-2 models on math sequences with noise/backdoor "
                                           "artifacts, measure memorization, and mitigate it (17 methods).")
    sub = tm.add_subparsers(dest="tinymem_command", required=True)

    t = sub.add_parser("train", help="train a test-bed model and save a checkpoint")
    _data_args(t)
    t.add_argument("--out", required=True, help="checkpoint directory (must not exist or be empty)")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("measure", help="% memorized, % correct / ASR, accuracy and perplexity of a checkpoint")
    m.add_argument("checkpoint")
    m.add_argument("--include-pad", action="store_true", help="count padding positions in accuracy (reference)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_measure)

    g = sub.add_parser("mitigate", help="apply one mitigation to a checkpoint; writes a new checkpoint")
    g.add_argument("checkpoint")
    g.add_argument("--method", required=True, help="a regularizer, finetune_{clean,extra,both}, or an unlearning "
                                                  "method (see docs/tinymem.md)")
    g.add_argument("--ratio", type=float, default=None, help="unlearning ratio in (0, 1)")
    g.add_argument("--hp", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="method hyper-parameter")
    g.add_argument("--retain-size", type=int, default=None, help="use a seeded subset of the retain set")
    g.add_argument("--ft-epochs", type=int, default=5)
    g.add_argument("--out", required=True, help="output checkpoint directory (not the input)")
    g.add_argument("--threads", type=int, default=None)
    g.set_defaults(func=cmd_mitigate)

    c = sub.add_parser("compare", help="train, then run every mitigation; write a table and a plot")
    _data_args(c)
    c.add_argument("--methods", default="all", help="comma-separated methods (default all 17)")
    c.add_argument("--hp", type=key_value, action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="override a method's hyper-parameter, e.g. balanced_subnet.ratio=0.3")
    c.add_argument("--retain-size", type=int, default=None, help="seeded subset of the retain set for unlearning")
    c.add_argument("--ft-epochs", type=int, default=5)
    c.add_argument("--base", default=None, metavar="CHECKPOINT",
                   help="start from this trained test-bed (its data config and epochs) instead of training one")
    c.add_argument("--out", required=True, help="output directory: table.csv, table.md, plot.png, base/")
    c.set_defaults(func=cmd_compare)


#: Training defaults per preset (epochs, batch size): the paper's, and sizes a 2-core CPU trains in minutes.
TRAIN_DEFAULTS = {"paper": {"noise": (3500, 128), "backdoor": (500, 128)},
                  "cpu": {"noise": (10, 32), "backdoor": (10, 32)},
                  "tiny": {"noise": (3, 32), "backdoor": (3, 32)}}


def _check_out(out: str, inputs: tuple[str, ...] = ()) -> Path:
    from htsr.memorization.errors import MemorizationError

    p = Path(out).resolve()
    for i in inputs:
        q = Path(i).resolve()
        if p == q or q.is_relative_to(p) or p.is_relative_to(q):
            raise MemorizationError(f"--out {out} overlaps the input {i}; choose another directory")
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise MemorizationError(f"--out {out} exists and is not an empty directory")
    return p


def _config(args: argparse.Namespace):
    from htsr.memorization.data import preset_config

    # the named flags first; --data KEY=VALUE overrides any field, these included
    return preset_config(args.preset, **{"artifact": args.artifact, "task": args.task, "seed": args.seed,
                                         **dict(args.data)})


def _train_settings(args: argparse.Namespace) -> tuple[int, int]:
    from htsr.memorization.errors import MemorizationError

    ep, bs = TRAIN_DEFAULTS.get(args.preset, TRAIN_DEFAULTS["cpu"])[args.artifact]
    epochs = args.epochs if args.epochs is not None else ep
    batch = args.batch_size if args.batch_size is not None else bs
    if epochs < 1 or batch < 1:
        raise MemorizationError(f"--epochs and --batch-size must be >= 1, got {epochs}, {batch}")
    return epochs, batch


def _extra(tb, cfg) -> dict[str, Any]:
    extra = {"data": cfg.to_dict(), "train": {"epochs": tb.epochs, "batch_size": tb.batch_size, "seed": tb.seed,
                                              "time_s": tb.train_time_s},
             "measurement": tb.measurement.to_dict()}
    extra.update(getattr(tb.model, "_htsr_regularizer_extra", {}))
    return extra


def _print_measurement(m, as_json: bool) -> None:
    if as_json:
        print(json.dumps(m.to_dict(), indent=2))
        return
    print(f"% memorized {m.perc_memorized:.2f} (of {m.n_checked} checked), % correct {m.perc_correct:.2f}, "
          f"mean accuracy {m.mean_accuracy:.2f}, mean perplexity {m.mean_perplexity:.4f}")
    for k in m.accuracy:
        print(f"  {k}: accuracy {m.accuracy[k]:.2f}  perplexity {m.perplexity[k]:.4f}")
    if m.n_asr:
        print(f"  backdoor attack success rate (held-out, {m.n_asr} sequences): {m.asr:.2f}")
    for k, v in m.by_dup.items():
        print(f"  duplicated {k}: % memorized {v:.2f}")


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``htsr tinymem train``."""
    from htsr.errors import HtsrError
    from htsr.memorization.compare import train_base
    from htsr.memorization.models import save_testbed

    try:
        set_threads(args.threads)
        cfg = _config(args)
        out = _check_out(args.out)
        epochs, batch = _train_settings(args)
        tb = train_base(cfg, args.layers, epochs, batch_size=batch, seed=args.seed, device=args.device)
        save_testbed(out, tb.model, tb.optimizer, _extra(tb, cfg))
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    _print_measurement(tb.measurement, False)
    print(f"wrote {out} (trained {epochs} epochs in {tb.train_time_s:.1f} s)", file=sys.stderr)
    return 0


def _load(path: str):
    from htsr.memorization.data import TinyMemConfig, make_math_data
    from htsr.memorization.models import load_testbed

    model, extra, opt = load_testbed(path, with_optimizer=True)
    if "data" not in extra:
        from htsr.errors import SourceError

        raise SourceError(f"{path} does not record its TinyMem data config")
    cfg = TinyMemConfig.from_dict(extra["data"])
    return model, extra, opt, cfg, make_math_data(cfg)


def cmd_measure(args: argparse.Namespace) -> int:
    """Run ``htsr tinymem measure``."""
    from htsr.errors import HtsrError
    from htsr.memorization.metrics import measure

    try:
        model, _, _, _, data = _load(args.checkpoint)
        m = measure(model, data, include_pad=args.include_pad)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    _print_measurement(m, args.json)
    return 0


def _testbed(model, extra, opt, data):
    import pandas as pd

    from htsr.memorization.compare import Testbed
    from htsr.memorization.metrics import measure

    tr = extra.get("train", {})
    return Testbed(data, model, opt if opt is not None else _fresh_opt(model), measure(model, data),
                   float(tr.get("time_s", float("nan"))), int(tr.get("epochs", 1)), int(tr.get("batch_size", 128)),
                   int(tr.get("seed", 0)), pd.DataFrame())


def _fresh_opt(model):
    from htsr.memorization.training import make_optimizer

    return make_optimizer(model)


def cmd_mitigate(args: argparse.Namespace) -> int:
    """Run ``htsr tinymem mitigate``."""
    from htsr.errors import HtsrError
    from htsr.io import write_json
    from htsr.memorization.compare import ALL_METHODS, UNLEARNING_METHODS, apply_method
    from htsr.memorization.errors import MemorizationError
    from htsr.memorization.models import save_testbed

    try:
        set_threads(args.threads)
        if args.method not in ALL_METHODS:
            raise MemorizationError(f"unknown method {args.method!r}; expected one of {', '.join(ALL_METHODS)}")
        out = _check_out(args.out, (args.checkpoint,))
        hp = dict(args.hp)
        if args.ratio is not None:
            if args.method not in UNLEARNING_METHODS:
                raise MemorizationError("--ratio applies to unlearning methods only")
            hp["ratio"] = args.ratio
        model, extra, opt, cfg, data = _load(args.checkpoint)
        tb = _testbed(model, extra, opt, data)
        new, row = apply_method(tb, args.method, hp=hp, ft_epochs=args.ft_epochs, retain_size=args.retain_size)
        new_extra = {**{k: v for k, v in extra.items() if k != "regularizer"}, "mitigation": row}
        new_extra.update(getattr(new, "_htsr_regularizer_extra", {}))
        save_testbed(out, new, None, new_extra)
        write_json(out / "mitigation.json", row)
    except (HtsrError, ValueError, OSError, KeyError) as e:
        return error(str(e))
    print(f"{args.method}: % memorized {row['mem_before']:.2f} -> {row['mem_after']:.2f}, mean accuracy "
          f"{row['acc_before']:.2f} -> {row['acc_after']:.2f} ({row['time_s']:.1f} s)")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run ``htsr tinymem compare``."""
    from htsr.errors import HtsrError
    from htsr.io import atomic_write, write_json, write_table
    from htsr.memorization.compare import ALL_METHODS, markdown_table, plot_comparison, run_comparison, train_base
    from htsr.memorization.errors import MemorizationError
    from htsr.memorization.models import save_testbed

    try:
        set_threads(args.threads)
        out = _check_out(args.out, (args.base,) if args.base else ())
        methods = list(ALL_METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m]
        bad = [m for m in methods if m not in ALL_METHODS]
        if bad:
            raise MemorizationError(f"unknown method(s) {bad}; expected some of {', '.join(ALL_METHODS)}")
        hp: dict[str, dict] = {}
        for k, v in args.hp:
            if "." not in k:
                raise MemorizationError(f"--hp expects METHOD.KEY=VALUE, got {k}")
            meth, key = k.split(".", 1)
            if meth not in methods:
                raise MemorizationError(f"--hp {k}: {meth!r} is not among the methods run ({', '.join(methods)})")
            hp.setdefault(meth, {})[key] = v
        t0 = time.perf_counter()
        if args.base:
            model, extra, opt, cfg, data = _load(args.base)
            if args.device:
                model.to(args.device)
            tb = _testbed(model, extra, opt, data)
            epochs, batch = tb.epochs, tb.batch_size
            args.layers = model.config.n_layer
        else:
            cfg = _config(args)
            epochs, batch = _train_settings(args)
            tb = train_base(cfg, args.layers, epochs, batch_size=batch, seed=args.seed, device=args.device)
        out.mkdir(parents=True, exist_ok=True)
        save_testbed(out / "base", tb.model, tb.optimizer, _extra(tb, cfg))
        print(f"base: % memorized {tb.measurement.perc_memorized:.2f}, mean accuracy "
              f"{tb.measurement.mean_accuracy:.2f} ({tb.train_time_s:.1f} s)", file=sys.stderr, flush=True)

        done: list[dict] = []

        def on_row(r: dict) -> None:
            done.append(r)
            import pandas as pd

            part = pd.DataFrame(done)
            part["settings"] = part["settings"].map(json.dumps)
            write_table(out / "partial.csv", part)
            if r.get("error"):
                print(f"{r['method']}: skipped: {r['error']}", file=sys.stderr, flush=True)
                return
            print(f"{r['method']}: % memorized {r['mem_before']:.2f} -> {r['mem_after']:.2f}, accuracy "
                  f"{r['acc_before']:.2f} -> {r['acc_after']:.2f} ({r['time_s']:.1f} s)", file=sys.stderr, flush=True)

        table = run_comparison(tb, methods, hp=hp, ft_epochs=args.ft_epochs, retain_size=args.retain_size,
                               on_row=on_row)
        total = time.perf_counter() - t0
        flat = table.copy()
        flat["settings"] = flat["settings"].map(json.dumps)
        write_table(out / "table.csv", flat)
        md = markdown_table(table)
        atomic_write(out / "table.md", lambda p: p.write_text(md + "\n"))
        title = f"TinyMem {args.layers}-layer, {cfg.artifact} ({cfg.task}, preset {args.preset})"
        plot_comparison(table, out / "plot.png", title)
        write_json(out / "run.json", {"config": cfg.to_dict(), "layers": args.layers, "epochs": epochs,
                                      "batch_size": batch, "total_time_s": total, "methods": methods, "hp": hp})
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    print(md)
    print(f"total {total:.1f} s; wrote {out}", file=sys.stderr)
    return 0
