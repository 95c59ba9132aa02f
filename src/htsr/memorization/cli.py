"""``htsr tinymem train|measure|mitigate|compare``: the TinyMem memorization test-bed and its 17 mitigations.

Every setting lands in a config of :mod:`htsr.memorization.config` and is checked before any work starts.
``--set KEY=VALUE`` addresses them by path: ``data.FIELD`` (:class:`TinyMemConfig`), ``train.FIELD``
(:class:`TrainConfig`) and, for ``compare``, ``METHOD.FIELD`` (that method's config); for ``mitigate`` a plain
``FIELD`` of the chosen method's config. ``--data KEY=VALUE`` and ``--hp KEY=VALUE`` are the older spellings of
``--set data.KEY=VALUE`` and ``--set [METHOD.]KEY=VALUE``. Errors are reported by :func:`htsr.cli.main.run`
(docs/cli.md): bad input exits 2 before any training, a comparison whose every method failed exits 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from htsr.cli.common import (
    add_device,
    add_executor,
    add_json,
    add_out_dir,
    add_progress,
    add_seed,
    add_set,
    add_threads,
    bounded,
    choice_list,
    executor_from_args,
    key_value,
    positive_int,
    print_json,
    say,
)

#: Training defaults per preset (epochs, batch size): the paper's, and sizes a 2-core CPU trains in minutes.
TRAIN_DEFAULTS = {"paper": {"noise": (3500, 128), "backdoor": (500, 128)},
                  "cpu": {"noise": (10, 32), "backdoor": (10, 32)},
                  "tiny": {"noise": (3, 32), "backdoor": (3, 32)}}


def _methods() -> tuple[str, ...]:
    from htsr.memorization.config import FINETUNING, REGULARIZERS, UNLEARNING

    return (*REGULARIZERS.names(), *FINETUNING.names(), *UNLEARNING.names())


def _prefixed(prefix: str):
    """argparse type of the old ``--data KEY=VALUE``: the same pair as ``--set data.KEY=VALUE``."""
    def parse(s: str) -> tuple[str, Any]:
        k, v = key_value(s)
        return f"{prefix}{k}", v

    parse.__name__ = "KEY=VALUE"
    return parse


def _data_args(p: argparse.ArgumentParser) -> None:
    from htsr.memorization.config import ARTIFACTS, TASKS
    from htsr.memorization.data import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), default="cpu", help="data size (default cpu)")
    p.add_argument("--artifact", choices=list(ARTIFACTS), default="noise", help="memorized artifact (default noise)")
    p.add_argument("--task", choices=list(TASKS), default="increment", help="math task (default increment)")
    p.add_argument("--layers", type=bounded(int, 1, 64), default=2,
                   help="transformer blocks, 1-64 (default 2; the paper uses 1-16)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--data", dest="overrides", type=_prefixed("data."), action="append", metavar="KEY=VALUE",
                   help="same as --set data.KEY=VALUE (a TinyMemConfig field, e.g. n_noise=200)")
    add_seed(p)
    add_threads(p)
    add_device(p)
    add_progress(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    tm = subparsers.add_parser("tinymem", help="TinyMem memorization test-bed and mitigations",
                               description="Train small GPT-2 models on math sequences with noise/backdoor "
                                           "artifacts, measure memorization, and mitigate it (17 methods).")
    sub = tm.add_subparsers(dest="tinymem_command", required=True)

    t = sub.add_parser("train", help="train a test-bed model and save a checkpoint")
    _data_args(t)
    add_set(t, "the data (data.FIELD) or training (train.FIELD) config")
    add_out_dir(t, "checkpoint directory to write")
    add_json(t)
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("measure", help="%% memorized, %% correct / ASR, accuracy and perplexity of a checkpoint")
    m.add_argument("checkpoint", help="a TinyMem checkpoint directory (tinymem train/mitigate --out-dir)")
    m.add_argument("--include-pad", action="store_true", help="count padding positions in accuracy (reference)")
    add_json(m)
    add_threads(m)
    add_device(m)
    m.set_defaults(func=cmd_measure)

    g = sub.add_parser("mitigate", help="apply one mitigation to a checkpoint; writes a new checkpoint")
    g.add_argument("checkpoint", help="a TinyMem checkpoint directory")
    g.add_argument("--method", required=True, choices=_methods(), metavar="METHOD",
                   help="a regularizer, finetune_{clean,extra,both}, or an unlearning method: "
                        + ", ".join(_methods()))
    g.add_argument("--ratio", type=bounded(float, 0, 1, lo_open=True, hi_open=True), default=None,
                   help="unlearning ratio in (0, 1) (same as --set ratio=R)")
    add_set(g, "the method's config (e.g. --set epochs=10)")
    g.add_argument("--hp", dest="overrides", type=key_value, action="append", metavar="KEY=VALUE",
                   help="same as --set KEY=VALUE")
    g.add_argument("--retain-size", type=positive_int, default=None,
                   help="unlearning: a seeded subset of this many retain sequences (default all)")
    g.add_argument("--ft-epochs", type=positive_int, default=None,
                   help="fine-tuning epochs (same as --set epochs=N; default 5)")
    add_out_dir(g, "checkpoint directory to write (not the input)")
    add_json(g)
    add_threads(g)
    add_device(g)
    add_progress(g)
    g.set_defaults(func=cmd_mitigate)

    c = sub.add_parser("compare", help="train, then run every mitigation; write a table and a plot")
    _data_args(c)
    c.add_argument("--methods", type=choice_list(("all", *_methods())), default=("all",),
                   help="comma-separated methods, or all (default all 17)")
    add_set(c, "a config: data.FIELD, train.FIELD or METHOD.FIELD (e.g. balanced_subnet.ratio=0.3)")
    c.add_argument("--hp", dest="overrides", type=key_value, action="append", metavar="METHOD.KEY=VALUE",
                   help="same as --set METHOD.KEY=VALUE")
    c.add_argument("--retain-size", type=positive_int, default=None,
                   help="a seeded subset of this many retain sequences for unlearning (default all)")
    c.add_argument("--ft-epochs", type=positive_int, default=None,
                   help="fine-tuning epochs (same as --set finetune_*.epochs=N; default 5)")
    c.add_argument("--base", default=None, metavar="CHECKPOINT",
                   help="start from this trained test-bed (its data config and epochs) instead of training one")
    add_out_dir(c, "output directory: table.csv, table.md, plot.png, run.json, base/, methods/ (one cell per "
                   "method)")
    add_json(c)
    add_executor(c)
    c.set_defaults(func=cmd_compare)


# ------------------------------------------------------------------ settings
def _split_sets(args: argparse.Namespace, prefixes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The ``--set`` pairs grouped by their ``PREFIX.`` (one of ``prefixes``); an unknown prefix is an error."""
    from htsr.memorization.errors import MemorizationError

    out: dict[str, dict[str, Any]] = {}
    for key, value in args.overrides or []:
        head, dot, field = key.partition(".")
        if not dot or head not in prefixes or not field:
            raise MemorizationError(f"--set {key}: expected PREFIX.FIELD with PREFIX one of {', '.join(prefixes)}")
        out.setdefault(head, {})[field] = value
    return out


def _configs(args: argparse.Namespace, sets: dict[str, dict[str, Any]]):
    """The data and training configs from the flags, then ``--set data.*`` / ``train.*``."""
    from htsr.memorization.config import TrainConfig
    from htsr.memorization.data import preset_config

    data = preset_config(args.preset, **{"artifact": args.artifact, "task": args.task, "seed": args.seed,
                                         **sets.get("data", {})})
    ep, bs = TRAIN_DEFAULTS[args.preset][data.artifact]
    train = TrainConfig.from_dict({"layers": args.layers, "epochs": args.epochs or ep,
                                   "batch_size": args.batch_size or bs, **sets.get("train", {})})
    return data, train


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _extra(tb, cfg, train_cfg=None) -> dict[str, Any]:
    extra = {"data": cfg.to_dict(), "train": {"epochs": tb.epochs, "batch_size": tb.batch_size, "seed": tb.seed,
                                              "time_s": tb.train_time_s,
                                              **({"lr": train_cfg.lr} if train_cfg is not None else {})},
             "measurement": tb.measurement.to_dict()}
    extra.update(getattr(tb.model, "_htsr_regularizer_extra", {}))
    return extra


def _print_measurement(m) -> None:
    print(f"% memorized {m.perc_memorized:.2f} (of {m.n_checked} checked), % correct {m.perc_correct:.2f}, "
          f"mean accuracy {m.mean_accuracy:.2f}, mean perplexity {m.mean_perplexity:.4f}")
    for k in m.accuracy:
        print(f"  {k}: accuracy {m.accuracy[k]:.2f}  perplexity {m.perplexity[k]:.4f}")
    if m.n_asr:
        print(f"  backdoor attack success rate (held-out, {m.n_asr} sequences): {m.asr:.2f}")
    for k, v in m.by_dup.items():
        print(f"  duplicated {k}: % memorized {v:.2f}")


def _load(path: str, device: str | None = None):
    """A checkpoint with its data config and test-bed data: (model, extra, optimizer, data config, data)."""
    from htsr.memorization.compare import load_base_parts

    return load_base_parts(path, device)


def _testbed(path: str, model, extra, opt, data):
    """A :class:`~htsr.memorization.compare.Testbed` of a loaded checkpoint (measured now)."""
    from htsr.memorization.compare import testbed_of

    return testbed_of(path, model, extra, opt, data)


# ------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace) -> int:
    """Run ``htsr tinymem train``."""
    from htsr.io import check_replace_dir, replace_dir
    from htsr.memorization.compare import train_base
    from htsr.memorization.testbed import save_testbed

    cfg, train_cfg = _configs(args, _split_sets(args, ("data", "train")))
    check_replace_dir(args.out_dir, overwrite=args.overwrite)
    tb = train_base(cfg, train_cfg.layers, train_cfg.epochs, batch_size=train_cfg.batch_size, seed=args.seed,
                    device=_device(args.device), lr=train_cfg.lr, progress=args.progress)
    out = replace_dir(args.out_dir, lambda d: save_testbed(d, tb.model, tb.optimizer, _extra(tb, cfg, train_cfg)),
                      overwrite=args.overwrite)
    if args.json:
        print_json({"out_dir": str(out), "epochs": tb.epochs, "train_time_s": tb.train_time_s,
                    "measurement": tb.measurement.to_dict()})
    else:
        _print_measurement(tb.measurement)
    say(f"wrote {out} (trained {tb.epochs} epochs in {tb.train_time_s:.1f} s)")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    """Run ``htsr tinymem measure``."""
    from htsr.memorization.metrics import measure

    model, _, _, _, data = _load(args.checkpoint, _device(args.device))
    m = measure(model, data, include_pad=args.include_pad)
    if args.json:
        print_json(m.to_dict())
    else:
        _print_measurement(m)
    return 0


def cmd_mitigate(args: argparse.Namespace) -> int:
    """Run ``htsr tinymem mitigate``."""
    from htsr.io import check_replace_dir, replace_dir, write_json
    from htsr.memorization.compare import apply_method
    from htsr.memorization.config import FinetuneConfig, UnlearnConfig, mitigation_config
    from htsr.memorization.errors import MemorizationError
    from htsr.memorization.testbed import save_testbed

    hp = {k.removeprefix(f"{args.method}."): v for k, v in (args.overrides or [])}
    cfg = mitigation_config(args.method, hp)
    if args.ratio is not None:
        if not isinstance(cfg, UnlearnConfig):
            raise MemorizationError(f"--ratio applies to unlearning methods only, not {args.method}")
        cfg = cfg.replace(ratio=args.ratio)
    if args.ft_epochs is not None:
        if not isinstance(cfg, FinetuneConfig):
            raise MemorizationError(f"--ft-epochs applies to fine-tuning methods only, not {args.method}")
        cfg = cfg.replace(epochs=args.ft_epochs)
    if args.retain_size is not None and not isinstance(cfg, UnlearnConfig):
        raise MemorizationError(f"--retain-size applies to unlearning methods only, not {args.method}")
    check_replace_dir(args.out_dir, overwrite=args.overwrite, inputs=[args.checkpoint])
    model, extra, opt, _, data = _load(args.checkpoint, _device(args.device))
    tb = _testbed(args.checkpoint, model, extra, opt, data)
    new, row = apply_method(tb, args.method, config=cfg, retain_size=args.retain_size, progress=args.progress)
    new_extra = {**{k: v for k, v in extra.items() if k != "regularizer"}, "mitigation": row}
    new_extra.update(getattr(new, "_htsr_regularizer_extra", {}))

    def fill(d: Path) -> None:
        save_testbed(d, new, None, new_extra)
        write_json(d / "mitigation.json", row)

    out = replace_dir(args.out_dir, fill, overwrite=args.overwrite, inputs=[args.checkpoint])
    if args.json:
        print_json(row)
    else:
        print(f"{args.method}: % memorized {row['mem_before']:.2f} -> {row['mem_after']:.2f}, mean accuracy "
              f"{row['acc_before']:.2f} -> {row['acc_after']:.2f} ({row['time_s']:.1f} s)")
    say(f"wrote {out}")
    return 0


def _flat(rows) -> Any:
    import pandas as pd

    t = pd.DataFrame(rows)
    t["settings"] = t["settings"].map(json.dumps)
    return t


def cmd_compare(args: argparse.Namespace) -> int:
    """Run ``htsr tinymem compare``: exit 1 (MeasurementError) when every method failed."""
    from htsr.errors import ConfigError
    from htsr.io import atomic_write, check_replace_dir, replace_dir, write_json, write_table
    from htsr.memorization.compare import (
        ALL_METHODS,
        ComparisonFailed,
        comparison_configs,
        markdown_table,
        plot_comparison,
        run_comparison,
        train_base,
    )
    from htsr.memorization.config import FINETUNING
    from htsr.memorization.testbed import save_testbed

    methods = list(ALL_METHODS) if "all" in args.methods else list(dict.fromkeys(args.methods))
    if "all" in args.methods and len(args.methods) > 1:
        raise ConfigError(f"--methods all cannot be combined with other names, got {','.join(args.methods)}")
    sets = _split_sets(args, ("data", "train", *ALL_METHODS))
    if args.ft_epochs is not None:
        for m in methods:
            if m in FINETUNING:
                sets.setdefault(m, {}).setdefault("epochs", args.ft_epochs)
    method_sets = {m: v for m, v in sets.items() if m not in ("data", "train")}
    configs = comparison_configs(methods, method_sets)
    device = _device(args.device)
    if args.base:
        if "data" in sets or "train" in sets:
            raise ConfigError("--set data.* / train.* do not apply with --base (the checkpoint's settings are used)")
        check_replace_dir(args.out_dir, overwrite=args.overwrite, inputs=[args.base])
        model, extra, opt, cfg, data = _load(args.base, device)
        tb = _testbed(args.base, model, extra, opt, data)
        train_cfg = None
    else:
        cfg, train_cfg = _configs(args, sets)
        check_replace_dir(args.out_dir, overwrite=args.overwrite)
        tb = None  # trained inside the output directory's fill
    t0 = time.perf_counter()
    failed: list[ComparisonFailed] = []
    result: dict[str, Any] = {}

    def fill(out: Path) -> None:
        nonlocal tb
        if not args.base:
            tb = train_base(cfg, train_cfg.layers, train_cfg.epochs, batch_size=train_cfg.batch_size,
                            seed=args.seed, device=device, lr=train_cfg.lr, progress=args.progress)
        save_testbed(out / "base", tb.model, tb.optimizer, _extra(tb, cfg, train_cfg))
        say(f"base: % memorized {tb.measurement.perc_memorized:.2f}, mean accuracy "
            f"{tb.measurement.mean_accuracy:.2f} ({tb.train_time_s:.1f} s)")
        done: list[dict] = []

        def on_row(r: dict) -> None:
            done.append(r)
            write_table(out / "partial.csv", _flat(done))
            if r.get("error"):
                say(f"{r['method']}: failed: {r['error']}")
            else:
                say(f"{r['method']}: % memorized {r['mem_before']:.2f} -> {r['mem_after']:.2f}, accuracy "
                    f"{r['acc_before']:.2f} -> {r['acc_after']:.2f} ({r['time_s']:.1f} s)")

        try:
            table = run_comparison(tb, methods, configs=configs, retain_size=args.retain_size,
                                   progress=args.progress, on_row=on_row, executor=executor,
                                   base_dir=out / "base", store_dir=out / "methods")
        except ComparisonFailed as e:
            failed.append(e)
            table = e.table
        total = time.perf_counter() - t0
        write_table(out / "table.csv", _flat(table.to_dict(orient="records")))
        md = markdown_table(table)
        atomic_write(out / "table.md", lambda p: p.write_text(md + "\n"))
        title = (f"TinyMem {tb.model.config.n_layer}-layer, {cfg.artifact} ({cfg.task}"
                 f"{'' if args.base else f', preset {args.preset}'})")
        plot_comparison(table, out / "plot.png", title)
        write_json(out / "run.json", {"config": cfg.to_dict(), "layers": tb.model.config.n_layer,
                                      "epochs": tb.epochs, "batch_size": tb.batch_size, "total_time_s": total,
                                      "methods": methods, "settings": {m: c.to_dict() for m, c in configs.items()},
                                      "base": args.base})
        (out / "partial.csv").unlink(missing_ok=True)
        result.update(table=table, md=md, total=total)

    with executor_from_args(args) as executor:  # options checked (and Ray reached) before any training
        out = replace_dir(args.out_dir, fill, overwrite=args.overwrite, inputs=[args.base] if args.base else [])
    if args.json:
        print_json({"out_dir": str(out), "total_time_s": result["total"],
                    "table": result["table"].to_dict(orient="records")})
    else:
        print(result["md"])
    say(f"total {result['total']:.1f} s; wrote {out}")
    if failed:
        raise failed[0]
    return 0
