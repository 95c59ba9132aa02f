"""``htsr lora``: AlphaLoRA allocation and MoE-LoRA fine-tuning.

* ``htsr lora allocate MODEL [--budget 160] [--beta 2.5] [--ranks R] [-o config.json]``: per-block alpha and the
  experts and top-k (or, with ``--ranks R``, per-block LoRA ranks at total rank ``R x blocks`` as a PEFT
  ``LoraConfig`` with ``rank_pattern``/``alpha_pattern``). ``MODEL``: a Hugging Face model directory, ``minilm``
  (the packaged all-MiniLM-L6-v2) or ``reference:llama-7b-hf`` (AlphaPruning's shipped LLaMA alphas).
* ``htsr lora train --variants alphalora,uniform --tasks kjv_genre --seeds 0,1 --out-dir DIR``: fine-tune and
  save the adapters for every (task, variant, seed), resumable (run the same command again to continue), with
  a summary of accuracy over seeds (mean, std, paired difference to the baseline variant).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from htsr.cli import common as C

ALLOCATION_NAMES = ("alphalora", "uniform", "mola_increasing", "mola_decreasing")
VARIANT_ALIASES = {"mola-increasing": "mola_increasing", "mola-decreasing": "mola_decreasing", "2-4-6-8":
                   "mola_increasing", "8-6-4-2": "mola_decreasing"}


def register(subparsers: Any) -> None:
    """Add ``lora`` with its ``allocate`` and ``train`` sub-commands."""
    from htsr.lora.config import TASKS, VARIANTS

    p = subparsers.add_parser(
        "lora", help="AlphaLoRA: LoRA experts or ranks per layer by heavy-tail layer quality",
        description="Allocate LoRA experts (MoE-LoRA) or PEFT LoRA ranks per layer from the layers' power-law "
                    "alphas (AlphaLoRA, EMNLP 2024), and fine-tune with them.")
    sub = p.add_subparsers(dest="lora_command", required=True, metavar="COMMAND")

    a = sub.add_parser("allocate", help="experts (or ranks) per layer from the layers' alphas",
                       description="Fit the power-law alpha of every targeted matrix (peak xmin, the alphapruning "
                                   "preset), average per block and allocate the budget proportionally to "
                                   "alpha^beta.")
    a.add_argument("model", metavar="MODEL",
                   help="a Hugging Face model directory, 'minilm' (packaged all-MiniLM-L6-v2) or "
                        "'reference:NAME' (shipped AlphaPruning alphas, e.g. reference:llama-7b-hf)")
    a.add_argument("--targets", type=C.name_list, default=None, metavar="NAME[,NAME...]",
                   help="target modules (PEFT names, globs or re:REGEX; default: the LLaMA projections, or "
                        "query,key,value,dense for BERT-style models)")
    a.add_argument("--budget", type=C.positive_int, default=160, help="total experts (default 160)")
    a.add_argument("--beta", type=C.positive_float, default=2.5, help="exponent on alpha (default 2.5)")
    a.add_argument("--allocation", choices=ALLOCATION_NAMES, default="alphalora", help="default alphalora")
    a.add_argument("--rounding", choices=("largest_remainder", "reference"), default="largest_remainder",
                   help="largest_remainder (default) or the reference's repair loop (bit-exact)")
    a.add_argument("--ranks", type=C.positive_int, default=None, metavar="R",
                   help="allocate per-block LoRA ranks at total R x blocks instead of experts, and write a PEFT "
                        "LoraConfig (rank_pattern, alpha_pattern)")
    a.add_argument("--lora-alpha", type=C.positive_float, default=16.0,
                   help="lora_alpha of the uniform rank-R adapter; per-block alphas keep its scaling (default 16)")
    C.add_out(a, (".json",), "write the allocation: the MoE-LoRA config, or with --ranks the PEFT LoraConfig")
    C.add_json(a)
    a.set_defaults(func=cmd_allocate)

    t = sub.add_parser("train", help="fine-tune with allocations over tasks and seeds (resumable)",
                       description="Fine-tune a sentence classifier with MoE-LoRA (uniform, MoLA increasing "
                                   "'2-4-6-8', decreasing, AlphaLoRA at equal expert budget) or plain LoRA "
                                   "(uniform or AlphaLoRA ranks at equal total rank); saves the adapters.")
    t.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                   help="cpu: packaged MiniLM, minutes (default); paper: the reference hyper-parameters for a 7B "
                        "decoder given with --model, on a GPU")
    t.add_argument("--model", default=None, metavar="DIR", help="Hugging Face model directory (default: MiniLM)")
    t.add_argument("--variants", type=C.name_list, default=("alphalora",), metavar="V[,V...]",
                   help=f"some of {', '.join(VARIANTS)} (also mola-increasing / 2-4-6-8, mola-decreasing); "
                        "default alphalora")
    t.add_argument("--tasks", type=C.choice_list(TASKS), default=("kjv_genre",), metavar="T[,T...]",
                   help=f"some of {', '.join(TASKS)} (default kjv_genre)")
    t.add_argument("--seeds", type=C.int_list, default=[0], metavar="S[,S...]", help="default 0")
    t.add_argument("--no-adapters", dest="adapters", action="store_false",
                   help="do not save each run's adapters under DIR/adapters")
    C.add_set(t, "the training configuration (e.g. --set budget=32 --set epochs=3)")
    C.add_device(t)
    C.add_threads(t)
    C.add_progress(t)
    C.add_executor(t)
    C.add_out_dir(t, "results directory (results.csv, cells/, adapters/); an existing one of the same "
                     "configuration is resumed")
    C.add_out(t, (".csv", ".json"), "write the summary (per task and variant)")
    C.add_json(t)
    t.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------------- allocate
def _source(spec: str) -> str:
    from htsr.errors import SourceError

    if spec == "minilm":
        from htsr.examples import example_path

        return str(example_path("minilm"))
    if not Path(spec).exists():
        raise SourceError(f"{spec}: no such file or directory; expected a model directory, a .safetensors file or "
                          "index, 'minilm' or 'reference:NAME'")
    return spec


def _default_targets(names: list[str]) -> tuple[str, ...]:
    from htsr.lora.config import BERT_TARGETS, LLAMA_TARGETS
    from htsr.lora.model import name_matches

    for targets in (LLAMA_TARGETS, BERT_TARGETS, ("c_attn", "c_proj", "c_fc"),
                    ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")):
        if any(name_matches(n, targets) for n in names):
            return targets
    return LLAMA_TARGETS


def cmd_allocate(args: argparse.Namespace) -> int:
    import numpy as np

    from htsr.errors import ConfigError
    from htsr.io import write_json
    from htsr.lora import allocation as A

    ranks_mode = args.ranks is not None
    per_block = None
    if args.model.startswith("reference:"):
        from htsr.data.reference import alphapruning_block_alphas

        if ranks_mode and args.out:
            raise ConfigError("--ranks with -o needs a model (the PEFT config names its modules); a reference has "
                              "only alphas")
        alphas = alphapruning_block_alphas(args.model.split(":", 1)[1])
        blocks = [f"model.layers.{k}" for k in range(alphas.size)]
        targets = tuple(args.targets or ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj"))
        source = args.model
    else:
        from htsr.lora.model import source_alphas
        from htsr.spectra.sources import path_entries

        source = _source(args.model)
        names = [e.module for e in path_entries(source) if len(e.shape) == 2]
        targets = tuple(args.targets or _default_targets(names))
        alphas, blocks, _, per_block = source_alphas(source, targets)  # streamed: the model is never built
    n = len(blocks)
    rows: list[dict[str, Any]] = []
    if ranks_mode:
        ranks = A.rank_allocation(alphas, args.ranks, args.beta, rounding=args.rounding)
        rows = [{"block": b, "alpha": float(a), "rank": int(r)} for b, a, r in zip(blocks, alphas, ranks, strict=True)]
        doc: dict[str, Any] = {"source": source, "targets": list(targets), "beta": args.beta, "rank": args.ranks,
                               "total_rank": int(ranks.sum()), "rounding": args.rounding, "blocks": rows}
        if per_block is not None:
            from htsr.lora.model import peft_config_from_names

            pc = peft_config_from_names(per_block, blocks[0].rpartition(".")[0], ranks.tolist(), r=args.ranks,
                                        lora_alpha=args.lora_alpha)
            doc["peft_config"] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in pc.to_dict().items()}
    else:
        e = A.allocation(args.allocation, args.budget, metrics=alphas, n_layers=n, beta=args.beta,
                         rounding=args.rounding)
        k = A.top_k(e)
        rows = [{"block": b, "alpha": float(a), "experts": int(x), "top_k": int(y)}
                for b, a, x, y in zip(blocks, alphas, e, k, strict=True)]
        doc = {"source": source, "allocation": args.allocation, "budget": args.budget, "beta": args.beta,
               "rounding": args.rounding, "blocks": rows,
               "molora_config": {"target_modules": list(targets), "experts": e.tolist(), "top_k": k.tolist()}}
    if args.out:
        write_json(args.out, doc)
        C.say(f"wrote {args.out}")
    if args.json:
        C.print_json(doc)
    else:
        col = "rank" if ranks_mode else "experts"
        print(f"{'block':<28} {'alpha':>7} {col:>7}" + ("" if ranks_mode else f" {'top_k':>5}"))
        for r in rows:
            print(f"{r['block']:<28} {r['alpha']:>7.3f} {r[col]:>7d}" + ("" if ranks_mode else f" {r['top_k']:>5d}"))
        total = sum(r[col] for r in rows)
        print(f"{'total':<28} {float(np.mean(alphas)):>7.3f} {total:>7d}")
    return 0


# ----------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from htsr.errors import ConfigError, MeasurementError
    from htsr.experiments.store import ResultStore
    from htsr.io import (
        prepare_run_dir,  # the shared resumable-output-directory rule
        write_json,
        write_table,
    )
    from htsr.lora.config import VARIANTS, preset_config
    from htsr.lora.train import compare, execution_free, paired_table, summarize

    variants = [VARIANT_ALIASES.get(v, v) for v in args.variants]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant(s) {', '.join(bad)}; expected some of {', '.join(VARIANTS)}")
    seeds = sorted(set(args.seeds))
    if any(s < 0 for s in seeds):
        raise ConfigError(f"seeds must be >= 0, got {seeds}")
    over = C.overrides(args)
    if args.model is not None:
        over["model"] = args.model
    if args.threads is not None:
        over.setdefault("threads", args.threads)
    if args.device == "auto":
        import torch

        over.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    elif args.device != "cpu":  # --device cpu is the default: the preset's device (paper: cuda) stands
        over.setdefault("device", args.device)
    cfg = preset_config(args.preset, over)
    if args.preset == "paper" and cfg.model is None:
        raise ConfigError("the paper preset needs --model DIR (a local 7B decoder such as Mistral-7B) and a GPU")
    if cfg.model is not None and not (Path(cfg.model) / "config.json").is_file():
        raise ConfigError(f"--model {cfg.model}: not a Hugging Face model directory (no config.json)")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device}: no CUDA device on this machine; use --device cpu")
    executor = C.executor_from_args(args)
    from htsr.lora.train import plan

    for v in variants:  # a bad allocation (budget, beta, targets) fails here, before anything is written
        plan(cfg.replace(variant=v))
    out = Path(args.out_dir)
    key = {"config": execution_free(cfg)}
    if prepare_run_dir(out, key, "lora.json", overwrite=args.overwrite):
        C.say(f"resuming {out} ({len(ResultStore(out))} cell(s) recorded)")
    table = compare(cfg, variants, list(args.tasks), seeds, out, executor=executor, progress=args.progress,
                    save_adapters=args.adapters)
    ok = table[(table["status"] == "ok") & table["variant"].isin(variants) & table["task"].isin(args.tasks)
               & table["seed"].isin(seeds)] if len(table) else table
    if ok.empty:
        raise MeasurementError(f"every run failed; see {out / 'results.csv'} and {out / 'cells'}")
    summary = summarize(ok, variants)
    write_table(out / "summary.csv", summary)
    write_json(out / "lora.json", {"resume_key": key, "status": "done", "config": cfg.to_dict(),
                                   "variants": variants, "tasks": list(args.tasks), "seeds": seeds})
    if args.out:
        C.write_out(args.out, summary)
    failed = int((table["status"] != "ok").sum())
    if args.json:
        C.print_json({"summary": summary.to_dict(orient="records"), "failed_runs": failed})
    else:
        print("test accuracy (%), mean ± std over seeds")
        print(paired_table(summary).reindex(columns=[v for v in variants]).to_string())
        if failed:
            C.say(f"{failed} run(s) failed; see {out / 'results.csv'}")
    return 0
