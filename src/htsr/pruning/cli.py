"""``htsr prune`` and ``htsr perplexity``: prune a Hugging Face model directory, measure perplexity.

Options follow docs/cli.md: every value is checked when parsed or, for what needs the model's ``config.json``
(``--seqlen`` against its positions), before any weight is loaded; the output directory is checked before the
work starts (``--out-dir`` is never the input, inside it or containing it; ``--overwrite`` replaces only a previous
htsr output); the input directory is never written. Errors are raised and turned into one line by
``htsr.cli.main``.
"""

from __future__ import annotations

import argparse
from typing import Any

from htsr.cli import common as C
from htsr.pruning.backends import BACKENDS

DTYPES = {"auto": None, "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _dtype(name: str) -> Any:
    import torch

    return None if DTYPES[name] is None else getattr(torch, DTYPES[name])


def _device(name: str) -> Any:
    from htsr.spectra.eigen import resolve_device

    return resolve_device(name)


def _nm(s: str) -> tuple[int, int]:
    try:
        n, m = (int(x) for x in s.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got {s!r}") from e
    if not 0 < n < m:
        raise argparse.ArgumentTypeError(f"an N:M pattern needs 0 < N < M, got {s!r}")
    return n, m


def register(subparsers: Any) -> None:
    """Add the ``prune`` and ``perplexity`` subcommands (each sets ``func``: args -> exit code)."""
    from htsr.pruning.config import ALLOCATIONS, MAPPINGS, PruneConfig
    from htsr.pruning.pruners import PRUNERS

    d = PruneConfig()
    p = subparsers.add_parser(
        "prune", help="prune a Hugging Face model with AlphaPruning, OWL or uniform layer-wise sparsity",
        description="Allocate per-layer sparsities (AlphaPruning from heavy-tail metrics, OWL, or uniform) and "
                    "prune each transformer block with magnitude, Wanda or SparseGPT, calibrating block by block. "
                    "Writes an HF model directory (safetensors) plus htsr_pruning_report.json into --out-dir.")
    p.add_argument("model_dir", help="Hugging Face model directory (config.json + weights)")
    p.add_argument("--sparsity", type=C.bounded(float, 0, 1, hi_open=True), default=None,
                   help="global target sparsity in [0, 1) (not needed with --nm)")
    p.add_argument("--pruner", choices=PRUNERS, default=None, help=f"intra-layer pruner (default {d.pruner})")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="layer-wise sparsity: alpha (AlphaPruning), uniform, owl; auto (default): alpha, or uniform "
                        "with --nm")
    p.add_argument("--epsilon", type=C.bounded(float, 0, 1), default=None,
                   help=f"AlphaPruning relative band in [0, 1] (default {d.epsilon})")
    p.add_argument("--metric", default=None,
                   help=f"{d.metric} (default), alpha_median, or an analysis column such as alpha_hat, stable_rank")
    p.add_argument("--mapping", choices=MAPPINGS, default=None,
                   help=f"AlphaPruning: block-mean metric (the reference's) or per matrix (default {d.mapping})")
    p.add_argument("--max-ratio", type=C.open_unit, default=None,
                   help="clip layer sparsities to [0, MAX_RATIO] with the mean restored (default: error instead)")
    p.add_argument("--nm", type=_nm, default=None, metavar="N:M", help="N:M pattern, e.g. 2:4 (uniform allocation)")
    p.add_argument("--owl-lambda", type=C.bounded(float, 0), default=None,
                   help=f"OWL band half-width >= 0 (default {d.owl_lambda})")
    p.add_argument("--owl-m", type=C.positive_float, default=None,
                   help=f"OWL outlier threshold > 0, times the mean score (default {d.owl_m})")
    C.add_set(p, "the pruning config (any PruneConfig field, e.g. --set blocksize=64 --set percdamp=0.02)")
    p.add_argument("--calibration", metavar="TEXTFILE", default=None,
                   help="UTF-8 text, .jsonl/.json.gz records with a \"text\" field (C4 shards), or a .parquet/.csv/"
                        ".tsv table with a text column, for calibration windows (needed by wanda, sparsegpt, owl)")
    p.add_argument("--nsamples", type=C.positive_int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=C.bounded(int, 2), default=None,
                   help="tokens per window, <= the model's positions (default min(2048, model positions))")
    C.add_seed(p, help="seed of the calibration windows")
    C.add_out_dir(p, "output model directory (new, empty, or a previous htsr output with --overwrite)")
    C.add_device(p)
    C.add_progress(p)
    p.add_argument("--dtype", choices=list(DTYPES), default="auto",
                   help="load (and save) the weights in this dtype; auto = the checkpoint's (statistics are float32)")
    p.add_argument("--backend", choices=list(BACKENDS), default="htsr",
                   help="who prunes with the allocation: htsr (default) or llmcompressor's Wanda/SparseGPT modifier "
                        "(pip install 'htsr[llmcompressor]')")
    p.add_argument("--format", choices=["hf", "compressed-tensors"], default="hf", dest="out_format",
                   help="hf (default): plain safetensors; compressed-tensors: the same weights with a "
                        "compressed-tensors quantization_config, 2:4 layers marked (pip install 'htsr[compress]')")
    p.add_argument("--sparsity-config", choices=["auto", "on", "off"], default="auto",
                   help="compressed-tensors: write the sparsity_config naming the sparse layers (auto: only when "
                        "every pruned layer is 2:4)")
    C.add_json(p)
    C.add_threads(p)
    p.set_defaults(func=cmd_prune)

    q = subparsers.add_parser("perplexity", help="perplexity of a causal LM on a text file",
                              description="exp(mean next-token NLL) over non-overlapping windows of the text.")
    q.add_argument("model_dir")
    q.add_argument("--text", required=True, metavar="FILE",
                   help="UTF-8 text, .jsonl/.json.gz with \"text\" fields, or .parquet/.csv/.tsv with a text column")
    q.add_argument("--seqlen", type=C.bounded(int, 2), default=None,
                   help="window length, <= the model's positions (default min(2048, model positions))")
    C.add_device(q)
    q.add_argument("--dtype", choices=list(DTYPES), default="auto")
    C.add_json(q)
    C.add_threads(q)
    q.set_defaults(func=cmd_perplexity)


def model_seqlen(model_dir: str, seqlen: int | None) -> int:
    """``seqlen`` checked against the positions the model's ``config.json`` declares (before loading weights), or
    the default ``min(2048, positions)``."""
    from htsr.errors import ConfigError
    from htsr.pruning.prune import n_positions, read_model_config

    n = n_positions(read_model_config(model_dir))
    if seqlen is None:
        return min(2048, n) if n else 2048
    if n is not None and seqlen > n:
        raise ConfigError(f"--seqlen {seqlen} exceeds the model's {n} positions; expected 2 <= seqlen <= {n}")
    return seqlen


def prune_config(args: argparse.Namespace):
    """The :class:`~htsr.pruning.config.PruneConfig` of the command line: ``--set`` pairs, then the flags given."""
    from htsr.pruning.config import PruneConfig

    flags = {"sparsity": args.sparsity, "pruner": args.pruner, "allocation": args.allocation,
             "epsilon": args.epsilon, "metric": args.metric, "mapping": args.mapping, "max_ratio": args.max_ratio,
             "nm": args.nm, "owl_lambda": args.owl_lambda, "owl_m": args.owl_m}
    cfg = PruneConfig.from_dict(C.overrides(args))
    cfg = cfg.replace(**{k: v for k, v in flags.items() if v is not None})
    cfg.target  # noqa: B018  (a target sparsity or an N:M pattern is required: an error now, not after loading)
    return cfg


def cmd_prune(args: argparse.Namespace) -> int:
    """Run ``htsr prune``."""
    from htsr.errors import ConfigError
    from htsr.io import check_replace_dir
    from htsr.pruning import evaluation as E
    from htsr.pruning.prune import load_model, prune_model, save_pruned

    cfg = prune_config(args)
    backend, out_format = args.backend, args.out_format
    inputs = [args.model_dir] + ([args.calibration] if args.calibration else [])
    check_replace_dir(args.out_dir, overwrite=args.overwrite, inputs=inputs)
    if backend == "llmcompressor" or out_format == "compressed-tensors":  # missing extras fail before loading
        from htsr.pruning.backends import require

        if backend == "llmcompressor":
            require("llmcompressor")
            from htsr.pruning.backends.llmcompressor import check_pruner

            check_pruner(cfg.pruner)
        if out_format == "compressed-tensors":
            require("compressed_tensors")
    needs_data = cfg.pruner != "magnitude" or cfg.resolved_allocation == "owl"
    if needs_data and not args.calibration:
        raise ConfigError(f"--calibration TEXTFILE is needed by pruner {cfg.pruner!r} / allocation "
                          f"{cfg.resolved_allocation!r}")
    seqlen = model_seqlen(args.model_dir, args.seqlen)
    text = E.read_text(args.calibration) if args.calibration else None
    model = load_model(args.model_dir, _dtype(args.dtype)).to(_device(args.device))
    ids = tok = None
    if text is not None:
        tok = E.load_tokenizer(args.model_dir, getattr(model.config, "vocab_size", None))
        ids = E.calibration_windows(E.tokenize(tok, text), args.nsamples, seqlen, args.seed)
    if backend == "llmcompressor":
        from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor

        report = prune_with_llmcompressor(model, calibration_ids=ids, config=cfg,
                                          processor=None if isinstance(tok, E.ByteTokenizer) else tok)
    else:
        report = prune_model(model, calibration_ids=ids, config=cfg, progress=args.progress)
    report.settings.update(model_dir=str(args.model_dir), calibration=args.calibration, seed=args.seed)
    if out_format == "compressed-tensors":
        from htsr.pruning.export import export_compressed_tensors

        mark = {"auto": None, "on": True, "off": False}[args.sparsity_config]
        out = export_compressed_tensors(model.to("cpu"), args.out_dir, report, source_dir=args.model_dir,
                                        mark_sparsity=mark, overwrite=args.overwrite)
    else:
        out = save_pruned(model.to("cpu"), args.out_dir, report, source_dir=args.model_dir, overwrite=args.overwrite)
    if args.json:
        C.print_json({"out_dir": str(out), "layers": len(report.layers), "target_sparsity": report.target_sparsity,
                      "achieved_sparsity": report.achieved_sparsity, "settings": report.settings,
                      "imputed_metric_layers": report.imputed_metric_layers})
    else:
        print(f"pruned {len(report.layers)} layers: target sparsity {report.target_sparsity:.4f}, "
              f"achieved {report.achieved_sparsity:.4f} ({report.settings['pruner']}, "
              f"{report.settings['allocation']}" + (", llmcompressor)" if backend == "llmcompressor" else ")"))
    C.say(f"wrote {out}")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    """Run ``htsr perplexity``."""
    from htsr.pruning import evaluation as E
    from htsr.pruning.prune import load_model

    seqlen = model_seqlen(args.model_dir, args.seqlen)
    text = E.read_text(args.text)
    model = load_model(args.model_dir, _dtype(args.dtype)).to(_device(args.device))
    tok = E.load_tokenizer(args.model_dir, getattr(model.config, "vocab_size", None))
    ids = E.tokenize(tok, text)
    ppl = E.perplexity(model, ids, seqlen)
    n = ids.numel() // seqlen
    if args.json:
        C.print_json({"perplexity": ppl, "windows": n, "seqlen": seqlen, "tokens": n * seqlen})
    else:
        print(f"perplexity {ppl:.4f} over {n} windows of {seqlen} tokens")
    return 0
