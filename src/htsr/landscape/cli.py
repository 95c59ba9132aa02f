"""``htsr landscape hessian|surface|connect|cka|sharpness``: curvature, loss surfaces, mode connectivity,
representation similarity (CKA) and worst-case sharpness of a small built-in recipe (a CNN with BatchNorm
trained briefly on scikit-learn's digits, offline) or of a user's safetensors
weights for that recipe.

Options follow docs/cli.md and are checked when the command line is parsed; errors are reported by
:func:`htsr.cli.main.run` (exit 1: the measurement failed, e.g. a non-finite loss on a path or every sharpness row
overflowed; exit 2: bad usage or input). Weights are single safetensors files of the recipe, read and written by
:func:`htsr.training.load_weights` / :func:`htsr.training.save_weights`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from htsr.cli.common import (
    add_json,
    add_out,
    add_plot,
    add_seed,
    add_threads,
    bounded,
    name_list,
    out_file,
    positive_float,
    positive_int,
    print_json,
    say,
)


def digits_cnn() -> Any:
    """The recipe's architecture: Conv(1→8, 3) + BN + ReLU + Conv(8→8, 3) + BN + ReLU + Linear(128→10)."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))


def digits_data(n_train: int = 1500) -> tuple[Any, Any, Any, Any]:
    """Digits as float images in [0, 1] (N, 1, 8, 8) and labels: the first ``n_train`` for training, the rest test."""
    import torch

    from htsr.data.digits import digits_arrays

    xa, ya = digits_arrays()
    x, y = torch.tensor(xa), torch.tensor(ya)  # copies of the cached arrays
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def recipe_model(seed: int, epochs: int = 3, weights: str | None = None) -> Any:
    """The recipe CNN, trained with the shared loop (SGD lr 0.05, momentum 0.9, batch 50, seeded), or loaded
    from ``weights`` (a safetensors file of this architecture)."""
    import torch

    from htsr.models import seeded_init
    from htsr.training import seeded_loader, train

    with seeded_init(seed):  # seeded initialisation without touching the global RNG
        model = digits_cnn()
    if weights is not None:
        _load_weights(model, weights)
        return model.eval()
    x, y, _, _ = digits_data()
    train(model, seeded_loader(x, y, 50, seed), torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
          epochs=epochs, progress=False)
    return model.eval()


def _load_weights(model: Any, path: str) -> None:
    """Recipe weights from a safetensors file, through :func:`htsr.training.load_weights` (the one weights
    reader); a file that is not ``.safetensors`` is a :class:`~htsr.errors.SourceError`."""
    from htsr.errors import SourceError
    from htsr.training import load_weights

    if Path(path).suffix.lower() != ".safetensors":
        raise SourceError(f"{path}: expected a .safetensors file of the digits CNN recipe")
    load_weights(path, model)


def _weights_in(s: str) -> str:
    """argparse type: a weights file to read (``.safetensors``)."""
    if Path(s).suffix.lower() != ".safetensors":
        raise argparse.ArgumentTypeError(f"{s}: expected a .safetensors file")
    return s


def _positive_floats(s: str) -> list[float]:
    """argparse type: comma-separated finite numbers > 0."""
    out = []
    for v in (v.strip() for v in s.split(",") if v.strip()):
        out.append(positive_float(v))
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers > 0, got {s!r}")
    return out


def _norms(s: str) -> list[int | str]:
    out: list[int | str] = []
    for v in (v.strip() for v in s.split(",") if v.strip()):
        if v == "2":
            out.append(2)
        elif v.lower() in ("inf", "linf"):
            out.append("inf")
        else:
            raise argparse.ArgumentTypeError(f"norms are 2 or inf, got {v!r}")
    if not out:
        raise argparse.ArgumentTypeError("expected at least one norm")
    return out


def _common(p: argparse.ArgumentParser, *, formats: tuple[str, ...], plot: str | None, models: int) -> None:
    """Options every sub-command shares: the recipe (seed, epochs, samples, weights in and out), outputs."""
    add_seed(p, help="seed of the recipe training and of every estimator")
    p.add_argument("--epochs", type=positive_int, default=3, help="recipe training epochs (default 3)")
    p.add_argument("--samples", type=bounded(int, 1, 1500), default=200,
                   help="training samples the landscape is measured on, 1-1500 (default 200, MD's Hessian batch)")
    if models == 1:
        p.add_argument("--weights", type=_weights_in, default=None, metavar="FILE.safetensors",
                       help="weights of the recipe CNN (default: train it)")
        p.add_argument("--save-weights", type=out_file((".safetensors",)), default=None, metavar="FILE.safetensors",
                       help="save the recipe model's weights")
    else:
        p.add_argument("--weights", type=_weights_in, nargs=2, default=None, metavar=("A", "B"),
                       help="two .safetensors files of the recipe CNN (default: train it with seeds SEED, SEED+1)")
        p.add_argument("--save-weights", type=out_file((".safetensors",)), nargs=2, default=None,
                       metavar=("A", "B"), help="save the two recipe models' weights (.safetensors)")
    add_out(p, formats, "write the result")
    if plot:
        add_plot(p, plot)
    add_json(p)
    add_threads(p)


def _chunks(x, y, n: int, batch_size: int) -> list[tuple[Any, Any]]:
    """The first ``n`` samples as consecutive batches of at most ``batch_size``."""
    return [(x[i: min(i + batch_size, n)], y[i: min(i + batch_size, n)]) for i in range(0, n, batch_size)]


def register(subparsers: Any) -> None:
    """Add ``landscape`` with sub-commands ``hessian``, ``surface``, ``connect``, ``cka`` and ``sharpness``."""
    top = subparsers.add_parser("landscape", help="Hessian spectra, loss surfaces, mode connectivity, CKA, sharpness",
                                description="Loss-landscape measurements on the built-in digits CNN recipe "
                                            "(or your safetensors weights for it).")
    sub = top.add_subparsers(dest="landscape_command", required=True)

    h = sub.add_parser("hessian", help="top eigenvalues, trace and spectral density of the Hessian")
    h.add_argument("--top-k", type=positive_int, default=1, help="eigenvalues to find (default 1)")
    h.add_argument("--eig-method", choices=["lanczos", "power"], default="lanczos")
    h.add_argument("--trace-method", choices=["hutchinson", "hutch++"], default="hutchinson")
    h.add_argument("--trace-matvecs", type=positive_int, default=None, metavar="N",
                   help="products for the trace, used exactly (hutch++ default 30; hutchinson default: PyHessian's "
                        "stopping rule)")
    h.add_argument("--max-iter", type=positive_int, default=100, help="most products per eigen-solve (default 100)")
    h.add_argument("--tol", type=bounded(float, 0, 1, lo_open=True, hi_open=True), default=1e-3,
                   help="residual tolerance ||Hv - theta v|| <= tol |theta| (default 1e-3)")
    h.add_argument("--density", action="store_true", help="also estimate the spectral density (SLQ)")
    _common(h, formats=(".json",), plot="write the spectral density (needs --density)", models=1)
    h.set_defaults(func=cmd_hessian)

    s = sub.add_parser("surface", help="1-D or 2-D loss/error surface along random filter-normalised directions")
    s.add_argument("--dims", type=int, choices=[1, 2], default=1)
    s.add_argument("--steps", type=bounded(int, 2, 501), default=21, help="points per axis, 2-501 (default 21)")
    s.add_argument("--range", type=positive_float, default=1.0, dest="extent",
                   help="coordinates in [-R, R], R > 0 (default 1)")
    s.add_argument("--keep-biasbn", action="store_true", help="move biases/BN parameters too (Li et al. copy)")
    s.add_argument("--bn", action="store_true", help="re-estimate BatchNorm statistics at each point")
    _common(s, formats=(".json", ".csv"), plot="write the surface (2-D: contour and 3-D view in one picture)",
            models=1)
    s.set_defaults(func=cmd_surface)

    c = sub.add_parser("connect", help="linear path and trained Bezier curve between two recipe models")
    c.add_argument("--curve", choices=["linear", "bezier", "both"], default="both")
    c.add_argument("--curve-epochs", type=positive_int, default=10, help="Bezier training epochs (default 10)")
    c.add_argument("--points", type=bounded(int, 2, 1001), default=5,
                   help="evaluated t values, >= 2 (default 5: 0, .25, .5, .75, 1)")
    _common(c, formats=(".json",), plot="write the error and loss along the paths", models=2)
    c.set_defaults(func=cmd_connect)

    k = sub.add_parser("cka", help="linear CKA between layers of two recipe models (seeds SEED and SEED+1)",
                       description="Linear CKA (Kornblith et al.) between the named layers (default: the outputs) of "
                                   "two recipe models on training samples.")
    k.add_argument("--layers", type=name_list, default=None, metavar="NAMES",
                   help="comma-separated module names (e.g. 1,4,8; 'output' for the logits; default: output)")
    k.add_argument("--estimator", choices=["minibatch", "biased", "debiased"], default="biased",
                   help="biased (default), debiased, or minibatch (Nguyen et al.) linear CKA")
    k.add_argument("--softmax", action="store_true",
                   help="softmax of the outputs before comparing (MD tree / TAX convention; hidden layers as they are)")
    _common(k, formats=(".json", ".csv"), plot=None, models=2)
    k.set_defaults(func=cmd_cka)

    sh = sub.add_parser("sharpness", help="worst-case (adaptive) sharpness of a recipe model",
                        description="Worst-case loss increase within an (adaptive) rho-ball, found by Auto-PGD "
                                    "(Andriushchenko et al.; SharpBalance's measure), per norm and radius.")
    sh.add_argument("--rho", type=_positive_floats, default=[0.5], metavar="R,R", help="radii > 0 (default 0.5)")
    sh.add_argument("--norm", type=_norms, default=[2], metavar="P,P", help="norms: 2 and/or inf (default 2)")
    sh.add_argument("--no-adaptive", action="store_true", help="plain (not weight-scaled) perturbations")
    sh.add_argument("--iters", type=positive_int, default=20, help="Auto-PGD iterations per batch (default 20)")
    sh.add_argument("--batch-size", type=positive_int, default=100, help="samples per batch (default 100)")
    _common(sh, formats=(".json", ".csv"), plot=None, models=1)
    sh.set_defaults(func=cmd_sharpness)


def _models(args: argparse.Namespace, n: int) -> list[Any]:
    """The recipe model(s): trained with seeds SEED (and SEED+1), or loaded from --weights; saved to
    --save-weights when asked."""
    from htsr.training import save_weights

    ws = (args.weights if n == 2 else [args.weights]) or [None] * n
    models = [recipe_model(args.seed + i, args.epochs, ws[i]) for i in range(n)]
    saves = args.save_weights if n == 2 else [args.save_weights]
    for m, path in zip(models, saves or [], strict=False):
        if path is not None:
            save_weights(path, m)
            say(f"wrote {path}")
    return models


def _emit(args: argparse.Namespace, result: dict[str, Any], table: Any = None) -> None:
    """``-o FILE`` (.json: the result; .csv: the table) and ``--json`` (the result on stdout)."""
    from htsr.io import write_json, write_table

    if args.out:
        if args.out.lower().endswith(".csv"):
            write_table(args.out, table)
        else:
            write_json(args.out, result)
        say(f"wrote {args.out}")
    if args.json:
        print_json(result)


def cmd_hessian(args: argparse.Namespace) -> int:
    """Run ``htsr landscape hessian``."""
    from htsr.errors import ConfigError
    from htsr.landscape.hessian import hessian_trace, spectral_density, top_eigenvalues
    from htsr.landscape.objective import Objective

    if args.plot and not args.density:
        raise ConfigError("--plot draws the spectral density: add --density")
    (model,) = _models(args, 1)
    x, y, _, _ = digits_data()
    obj = Objective(model, (x[: args.samples], y[: args.samples]))
    e = top_eigenvalues(obj, args.top_k, method=args.eig_method, max_iter=args.max_iter, tol=args.tol,
                        seed=args.seed)
    t = hessian_trace(obj, method=args.trace_method, max_iter=args.max_iter, tol=args.tol, seed=args.seed,
                      num_matvecs=args.trace_matvecs)
    res: dict[str, Any] = {"eigenvalues": e.eigenvalues.tolist(), "eig_method": e.method,
                           "eig_matvecs": e.n_matvecs, "eig_converged": e.converged,
                           "eig_residuals": e.residuals.tolist(), "trace": t.trace, "trace_std_err": t.std_err,
                           "trace_method": t.method, "trace_matvecs": t.n_matvecs, "num_params": obj.dim,
                           "samples": args.samples, "loss": obj.loss(), "seed": args.seed}
    dens = spectral_density(obj, seed=args.seed) if args.density else None
    if dens is not None:
        res["density_moments"] = [dens.moment(k) for k in (1, 2)]
    if not args.json:
        print(f"top eigenvalue(s): {', '.join(f'{v:.6g}' for v in e.eigenvalues)} ({e.method}, {e.n_matvecs} HVPs, "
              f"{'converged' if e.converged else 'NOT converged'}: residual "
              f"{', '.join(f'{r:.2g}' for r in e.residuals)}, tol {args.tol:g} x |eigenvalue|)")
        print(f"trace: {t.trace:.6g} ± {t.std_err:.2g} ({t.method}, {t.n_matvecs} HVPs); {obj.dim} parameters")
    _emit(args, res)
    if args.plot and dens is not None:
        from htsr.landscape.plots import plot_density

        plot_density(dens, args.plot)
        say(f"wrote {args.plot}")
    return 0


def cmd_surface(args: argparse.Namespace) -> int:
    """Run ``htsr landscape surface``."""
    import numpy as np

    from htsr.landscape.objective import Objective
    from htsr.landscape.surfaces import random_surface_1d, random_surface_2d

    (model,) = _models(args, 1)
    x, y, _, _ = digits_data()
    batch = (x[: args.samples], y[: args.samples])
    obj = Objective(model, batch)
    grid = np.linspace(-args.extent, args.extent, args.steps)
    kw = dict(seed=args.seed, ignore_biasbn=not args.keep_biasbn, bn_data=batch if args.bn else None)
    s = random_surface_1d(obj, grid, **kw) if args.dims == 1 else random_surface_2d(obj, grid, grid, **kw)
    df = s.to_pandas()
    if not args.json:
        print(f"{len(df)} points; loss min {np.nanmin(s.loss):.4g} max {np.nanmax(s.loss):.4g}; "
              f"{int(np.isnan(s.loss).sum())} NaN")
    _emit(args, {"meta": s.meta, "points": df.to_dict(orient="list")}, df)
    if args.plot:
        from htsr.landscape.plots import plot_surface_1d, plot_surface_2d

        (plot_surface_1d if args.dims == 1 else plot_surface_2d)(s, args.plot)
        say(f"wrote {args.plot}")
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    """Run ``htsr landscape connect``: a non-finite loss on a path is a failed measurement (exit 1)."""
    from htsr.landscape.paths import evaluate_curve, linear_path, train_bezier
    from htsr.training import seeded_loader

    a, b = _models(args, 2)
    x, y, _, _ = digits_data()
    train_dl = seeded_loader(x, y, 50, args.seed)
    eval_dl = _chunks(x, y, args.samples, 100)
    results, out = [], {}
    if args.curve in ("linear", "both"):
        results.append(linear_path(a, b, eval_dl, num_points=args.points))
    if args.curve in ("bezier", "both"):
        curve, _ = train_bezier(a, b, train_dl, epochs=args.curve_epochs, seed=args.seed, progress=None)
        results.append(evaluate_curve(curve, eval_dl, num_points=args.points))
    for r in results:
        m = r.metrics()
        out[r.kind] = {"t": r.t, "loss": r.loss, "error": r.error, **m}
        if not args.json:
            print(f"{r.kind}: train error along t: {' '.join(f'{100 * e:.1f}%' for e in r.error)}; "
                  f"mc={m['mode_connectivity']:.4g}, peak={m['mode_connectivity_peak']:.4g}")
    _emit(args, out)
    if args.plot:
        from htsr.landscape.plots import plot_path

        plot_path(results, args.plot)
        say(f"wrote {args.plot}")
    return 0


def cmd_cka(args: argparse.Namespace) -> int:
    """Run ``htsr landscape cka``: an undefined (NaN) entry is reported with its reason."""
    from htsr.errors import ConfigError
    from htsr.landscape.cka import compare_models

    if args.estimator == "minibatch" and args.samples < 4:
        raise ConfigError("--estimator minibatch needs --samples >= 4")
    layers = [None if n == "output" else n for n in args.layers] if args.layers else None
    a, b = _models(args, 2)
    x, y, _, _ = digits_data()
    data = _chunks(x, y, args.samples, 100)
    if args.estimator == "minibatch":
        data = [d for d in data if d[0].shape[0] >= 4]
    soft = (lambda name, t: t.softmax(dim=-1) if name == "<output>" else t) if args.softmax else None
    table = compare_models(a, b, data, layers_a=layers, estimator=args.estimator, feature_fn=soft, progress=False)
    reasons = table.attrs.get("reasons", {})
    entries = {str(r): {str(c): {"cka": float(v), "status": "undefined" if reasons.get(r, {}).get(c) else "ok",
                                 "reason": reasons.get(r, {}).get(c, "")} for c, v in row.items()}
               for r, row in table.iterrows()}
    if not args.json:
        print(f"linear CKA ({args.estimator}{', softmax outputs' if args.softmax else ''}) between "
              f"{'the two weight files' if args.weights else f'seeds {args.seed} and {args.seed + 1}'} on "
              f"{table.attrs.get('n_samples', args.samples)} samples:")
        print(table.round(4).to_string())
        for r, row in reasons.items():
            for c, why in row.items():
                print(f"{r} x {c}: {why}")
    long = [{"layer_a": r, "layer_b": c, **e} for r, row in entries.items() for c, e in row.items()]
    import pandas as pd

    _emit(args, {"estimator": args.estimator, "softmax": args.softmax, "seed": args.seed, "cka": entries,
                 "attrs": {k: v for k, v in table.attrs.items() if isinstance(v, int | float | str)}},
          pd.DataFrame(long))
    return 0


def cmd_sharpness(args: argparse.Namespace) -> int:
    """Run ``htsr landscape sharpness``: rows that overflow say so (status, reason); when every row failed the
    measurement failed (exit 1)."""
    from htsr.errors import MeasurementError
    from htsr.landscape.sharpness import sharpness_table

    (model,) = _models(args, 1)
    x, y, _, _ = digits_data()
    data = _chunks(x, y, args.samples, args.batch_size)
    table = sharpness_table(model, data, rhos=args.rho, ps=args.norm, adaptive=not args.no_adaptive,
                            n_iters=args.iters, seed=args.seed, max_batches=len(data), progress=False)
    if not args.json:
        print(f"worst-case {'plain' if args.no_adaptive else 'adaptive'} sharpness on {args.samples} samples "
              f"({int(table['n_batches'].iloc[0])} batches, {args.iters} Auto-PGD iterations):")
        print(table.drop(columns=["reason"]).round(5).to_string(index=False))
    failed = table[table["status"] != "ok"]
    for _, r in failed.iterrows():
        say(f"p={r['p']} rho={r['rho']:g}: failed: {r['reason']}")
    _emit(args, {"seed": args.seed, "rows": table.to_dict(orient="records")}, table)
    if len(failed) == len(table):
        raise MeasurementError(f"every sharpness measurement failed: {failed['reason'].iloc[0]}")
    return 0
