"""``htsr prune`` and ``htsr perplexity``: prune a Hugging Face model directory, measure perplexity.

Exit codes: 0 success, 2 bad usage or input (every check runs before any weight changes; the
input directory is never written).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from htsr.cli.common import error
from htsr.pruning.backends import BACKENDS

DTYPES = {"auto": None, "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _dtype(name: str) -> Any:
    import torch

    return None if DTYPES[name] is None else getattr(torch, DTYPES[name])


def _nm(s: str) -> tuple[int, int]:
    try:
        n, m = (int(x) for x in s.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got {s!r}") from e
    return n, m


def register(subparsers: Any) -> None:
    """Add the ``prune`` and ``perplexity`` subcommands (each sets ``func``: args -> exit code)."""
    p = subparsers.add_parser(
        "prune", help="prune a Hugging Face model with AlphaPruning, OWL or uniform layer-wise sparsity",
        description="Allocate per-layer sparsities (AlphaPruning from heavy-tail metrics, OWL, or uniform) and "
                    "prune each transformer block with magnitude, Wanda or SparseGPT, calibrating block by block. "
                    "Writes an HF model directory (safetensors) plus htsr_pruning_report.json.")
    p.add_argument("model_dir", help="Hugging Face model directory (config.json + weights)")
    p.add_argument("--sparsity", type=float, required=False, default=None,
                   help="global target sparsity in [0, 1) (not needed with --nm)")
    p.add_argument("--pruner", choices=["wanda", "sparsegpt", "magnitude"], default="wanda")
    p.add_argument("--allocation", choices=["alpha", "uniform", "owl"], default=None,
                   help="layer-wise sparsity: alpha (AlphaPruning, default), uniform (default with --nm), owl")
    p.add_argument("--epsilon", type=float, default=0.3, help="AlphaPruning relative band (default 0.3)")
    p.add_argument("--metric", default="alpha_peak",
                   help="alpha_peak (default), alpha_median, or an analysis column such as alpha_hat, stable_rank")
    p.add_argument("--mapping", choices=["block", "matrix"], default="block",
                   help="AlphaPruning: block-mean metric (default, as the reference) or per matrix")
    p.add_argument("--max-ratio", type=float, default=None,
                   help="clip layer sparsities to [0, MAX_RATIO] with the mean restored (default: error instead)")
    p.add_argument("--nm", type=_nm, default=None, metavar="N:M", help="N:M pattern, e.g. 2:4 (uniform allocation)")
    p.add_argument("--owl-lambda", type=float, default=0.08)
    p.add_argument("--owl-m", type=float, default=5.0)
    p.add_argument("--calibration", metavar="TEXTFILE", default=None,
                   help="UTF-8 text, .jsonl/.json.gz records with a \"text\" field (C4 shards), or a .parquet/.csv/"
                        ".tsv table with a text column, for calibration windows (needed by wanda, sparsegpt, owl)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default min(2048, model positions))")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar over blocks (default: when stderr is a terminal)")
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
    p.set_defaults(func=cmd_prune)

    q = subparsers.add_parser("perplexity", help="perplexity of a causal LM on a text file",
                              description="exp(mean next-token NLL) over non-overlapping windows of the text.")
    q.add_argument("model_dir")
    q.add_argument("--text", required=True, metavar="FILE",
                   help="UTF-8 text, .jsonl/.json.gz with \"text\" fields, or .parquet/.csv/.tsv with a text column")
    q.add_argument("--seqlen", type=int, default=None, help="window length (default min(2048, model positions))")
    q.add_argument("--device", default="cpu")
    q.add_argument("--dtype", choices=list(DTYPES), default="auto")
    q.add_argument("--json", action="store_true", help="print a JSON object instead of a line")
    q.set_defaults(func=cmd_perplexity)


def _default_seqlen(model: Any) -> int:
    from htsr.pruning.models import _n_positions

    n = _n_positions(model)
    return min(2048, n) if n else 2048


def cmd_prune(args: argparse.Namespace) -> int:
    """Run ``htsr prune``."""
    from htsr.errors import HtsrError
    from htsr.pruning import evaluation as E
    from htsr.pruning.models import load_model, prune_model, save_pruned

    backend = getattr(args, "backend", "htsr")
    out_format = getattr(args, "out_format", "hf")
    try:
        if args.sparsity is None and args.nm is None:
            return error("--sparsity is required (or --nm N:M)")
        if backend == "llmcompressor" or out_format == "compressed-tensors":  # missing extras fail before loading
            from htsr.pruning.backends import require

            if backend == "llmcompressor":
                require("llmcompressor")
                from htsr.pruning.backends.llmcompressor import check_pruner

                check_pruner(args.pruner)
            if out_format == "compressed-tensors":
                require("compressed_tensors")
        if args.allocation is None:
            args.allocation = "uniform" if args.nm is not None else "alpha"
        if args.nsamples < 1:
            return error("--nsamples must be >= 1")
        text = E.read_text(args.calibration) if args.calibration else None
        model = load_model(args.model_dir, _dtype(args.dtype)).to(args.device)
        ids = tok = None
        if text is not None:
            tok = E.load_tokenizer(args.model_dir, getattr(model.config, "vocab_size", None))
            seqlen = args.seqlen or _default_seqlen(model)
            ids = E.calibration_windows(E.tokenize(tok, text), args.nsamples, seqlen, args.seed)
        elif args.pruner != "magnitude" or args.allocation == "owl":
            return error(f"--calibration TEXTFILE is needed by pruner {args.pruner!r} / allocation {args.allocation!r}")
        kw = dict(nm=args.nm, metric=args.metric, mapping=args.mapping, max_ratio=args.max_ratio,
                  owl_lambda=args.owl_lambda, owl_m=args.owl_m)
        if backend == "llmcompressor":
            from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor

            report = prune_with_llmcompressor(model, args.sparsity, args.pruner, args.allocation, args.epsilon, ids,
                                              processor=None if isinstance(tok, E.ByteTokenizer) else tok, **kw)
        else:
            report = prune_model(model, args.sparsity, args.pruner, args.allocation, args.epsilon, ids,
                                 progress=args.progress, **kw)
        report.settings.update(model_dir=str(args.model_dir), calibration=args.calibration, seed=args.seed)
        if out_format == "compressed-tensors":
            from htsr.pruning.export import export_compressed_tensors

            mark = {"auto": None, "on": True, "off": False}[args.sparsity_config]
            out = export_compressed_tensors(model.to("cpu"), args.out, report, source_dir=args.model_dir,
                                            mark_sparsity=mark, overwrite=args.overwrite)
        else:
            out = save_pruned(model.to("cpu"), args.out, report, source_dir=args.model_dir, overwrite=args.overwrite)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    print(f"pruned {len(report.layers)} layers: target sparsity {report.target_sparsity:.4f}, "
          f"achieved {report.achieved_sparsity:.4f} ({report.settings['pruner']}, {report.settings['allocation']}"
          + (", llmcompressor)" if backend == "llmcompressor" else ")"))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    """Run ``htsr perplexity``."""
    from htsr.errors import HtsrError
    from htsr.pruning import evaluation as E
    from htsr.pruning.models import load_model

    try:
        text = E.read_text(args.text)
        model = load_model(args.model_dir, _dtype(args.dtype)).to(args.device)
        tok = E.load_tokenizer(args.model_dir, getattr(model.config, "vocab_size", None))
        seqlen = args.seqlen or _default_seqlen(model)
        ids = E.tokenize(tok, text)
        ppl = E.perplexity(model, ids, seqlen)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    n = ids.numel() // seqlen
    if args.json:
        print(json.dumps({"perplexity": ppl, "windows": n, "seqlen": seqlen, "tokens": n * seqlen}))
    else:
        print(f"perplexity {ppl:.4f} over {n} windows of {seqlen} tokens")
    return 0
