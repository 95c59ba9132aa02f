"""``htsr landscape hessian|surface|connect|cka|sharpness``: curvature, loss surfaces, mode connectivity,
representation similarity (CKA) and worst-case sharpness of a small built-in recipe (a CNN with BatchNorm
trained briefly on scikit-learn's digits, offline) or of a user's safetensors
weights for that recipe.

Exit codes: 0 success, 1 the analysis failed (non-finite loss on a path), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from htsr.cli.common import error, float_list


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
    from safetensors.torch import load_file

    from htsr.errors import SourceError

    p = Path(path)
    if not p.is_file() or p.suffix != ".safetensors":
        raise SourceError(f"{path}: expected an existing .safetensors file of the digits CNN recipe")
    try:
        state = load_file(str(p))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as e:
        raise SourceError(f"{path}: not weights of the digits CNN recipe ({str(e).splitlines()[0]})") from e


def _save_weights(model: Any, path: str) -> None:
    from safetensors.torch import save

    from htsr.io import atomic_write

    data = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _common(p: argparse.ArgumentParser, *, csv: bool, plot: bool) -> None:
    """Options every sub-command shares; ``--out`` takes .csv only where the result is a table, ``--plot`` exists
    only where something is plotted."""
    p.add_argument("--seed", type=int, default=0, help="seed of the recipe training and of every estimator")
    p.add_argument("--epochs", type=int, default=3, help="recipe training epochs (default 3)")
    p.add_argument("--samples", type=int, default=200,
                   help="training samples the landscape is measured on (default 200, MD's Hessian batch)")
    p.add_argument("--out", "-o", default=None, metavar="FILE",
                   help="write results (.json" + (" or .csv)" if csv else ")"))
    if plot:
        p.add_argument("--plot", default=None, metavar="DIR", help="write PNG plots to DIR")
    p.set_defaults(out_suffixes=(".json", ".csv") if csv else (".json",))


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
    h.add_argument("--weights", default=None, help="safetensors weights of the recipe CNN (default: train it)")
    h.add_argument("--top-k", type=int, default=1)
    h.add_argument("--eig-method", choices=["lanczos", "power"], default="lanczos")
    h.add_argument("--trace-method", choices=["hutchinson", "hutch++"], default="hutchinson")
    h.add_argument("--trace-matvecs", type=int, default=None, metavar="N",
                   help="hutch++: products in all (default 30; 21 is as accurate as PyHessian's trace on average)")
    h.add_argument("--max-iter", type=int, default=100, help="PyHessian's maxIter (default 100)")
    h.add_argument("--tol", type=float, default=1e-3, help="PyHessian's tol (default 1e-3)")
    h.add_argument("--density", action="store_true", help="also estimate the spectral density (SLQ)")
    h.add_argument("--save-weights", default=None, metavar="FILE", help="save the recipe model (.safetensors)")
    _common(h, csv=False, plot=True)
    h.set_defaults(func=cmd_hessian)

    s = sub.add_parser("surface", help="1-D or 2-D loss/error surface along random filter-normalised directions")
    s.add_argument("--weights", default=None)
    s.add_argument("--dims", type=int, choices=[1, 2], default=1)
    s.add_argument("--steps", type=int, default=21, help="points per axis (default 21)")
    s.add_argument("--range", type=float, default=1.0, dest="extent", help="coordinates in [-R, R] (default 1)")
    s.add_argument("--keep-biasbn", action="store_true", help="move biases/BN parameters too (Li et al. copy)")
    s.add_argument("--bn", action="store_true", help="re-estimate BatchNorm statistics at each point")
    _common(s, csv=True, plot=True)
    s.set_defaults(func=cmd_surface)

    c = sub.add_parser("connect", help="linear path and trained Bezier curve between two recipe models")
    c.add_argument("--weights", nargs=2, default=None, metavar=("A", "B"),
                   help="two safetensors files (default: train the recipe with seeds SEED and SEED+1)")
    c.add_argument("--curve", choices=["linear", "bezier", "both"], default="both")
    c.add_argument("--curve-epochs", type=int, default=10, help="Bezier training epochs (default 10)")
    c.add_argument("--points", type=int, default=5, help="evaluated t values (default 5: 0, .25, .5, .75, 1)")
    _common(c, csv=False, plot=True)
    c.set_defaults(func=cmd_connect)

    k = sub.add_parser("cka", help="linear CKA between layers of two recipe models (seeds SEED and SEED+1)",
                       description="Linear CKA (Kornblith et al.) between the named layers (default: the outputs) of "
                                   "two recipe models on training samples.")
    k.add_argument("--weights", nargs=2, default=None, metavar=("A", "B"),
                   help="two safetensors files (default: train the recipe with seeds SEED and SEED+1)")
    k.add_argument("--layers", default=None, metavar="NAMES",
                   help="comma-separated module names (e.g. 1,4,8; 'output' for the logits; default: output)")
    k.add_argument("--estimator", choices=["minibatch", "biased", "debiased"], default="biased",
                   help="biased (default), debiased, or minibatch (Nguyen et al.) linear CKA")
    k.add_argument("--softmax", action="store_true",
                   help="softmax of the outputs before comparing (MD tree / TAX convention; hidden layers as they are)")
    _common(k, csv=True, plot=False)
    k.set_defaults(func=cmd_cka)

    sh = sub.add_parser("sharpness", help="worst-case (adaptive) sharpness of a recipe model",
                        description="Worst-case loss increase within an (adaptive) rho-ball, found by Auto-PGD "
                                    "(Andriushchenko et al.; SharpBalance's measure), per norm and radius.")
    sh.add_argument("--weights", default=None, help="safetensors weights of the recipe CNN (default: train it)")
    sh.add_argument("--rho", type=float_list, default=[0.5], metavar="R,R", help="radii (default 0.5)")
    sh.add_argument("--norm", type=_norms, default=[2], metavar="P,P", help="norms: 2 and/or inf (default 2)")
    sh.add_argument("--no-adaptive", action="store_true", help="plain (not weight-scaled) perturbations")
    sh.add_argument("--iters", type=int, default=20, help="Auto-PGD iterations per batch (default 20)")
    sh.add_argument("--batch-size", type=int, default=100, help="samples per batch (default 100)")
    _common(sh, csv=True, plot=False)
    sh.set_defaults(func=cmd_sharpness)



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


def _check_common(args: argparse.Namespace) -> str | None:
    if args.epochs < 1:
        return "--epochs must be >= 1"
    if not 1 <= args.samples <= 1500:
        return "--samples must be in [1, 1500]"
    if args.out and Path(args.out).suffix.lower() not in args.out_suffixes:
        return f"--out {args.out}: expected a {' or '.join(args.out_suffixes)} file"
    return None


def cmd_hessian(args: argparse.Namespace) -> int:
    """Run ``htsr landscape hessian``."""
    from htsr.errors import HtsrError
    from htsr.io import write_json
    from htsr.landscape.hessian import hessian_trace, spectral_density, top_eigenvalues
    from htsr.landscape.objective import Objective

    msg = _check_common(args)
    if msg:
        return error(msg)
    if args.plot and not args.density:
        return error("--plot draws the spectral density: add --density")
    try:
        model = recipe_model(args.seed, args.epochs, args.weights)
        if args.save_weights:
            _save_weights(model, args.save_weights)
        x, y, _, _ = digits_data()
        obj = Objective(model, (x[: args.samples], y[: args.samples]))
        e = top_eigenvalues(obj, args.top_k, method=args.eig_method, max_iter=args.max_iter, tol=args.tol,
                            seed=args.seed)
        t = hessian_trace(obj, method=args.trace_method, max_iter=args.max_iter, tol=args.tol, seed=args.seed,
                          num_matvecs=args.trace_matvecs)
        res: dict[str, Any] = {"eigenvalues": e.eigenvalues.tolist(), "eig_method": e.method,
                               "eig_matvecs": e.n_matvecs, "eig_converged": e.converged, "trace": t.trace,
                               "trace_std_err": t.std_err, "trace_method": t.method, "trace_matvecs": t.n_matvecs,
                               "num_params": obj.dim, "samples": args.samples, "loss": obj.loss(), "seed": args.seed}
        dens = spectral_density(obj, seed=args.seed) if args.density else None
        if dens is not None:
            res["density_moments"] = [dens.moment(k) for k in (1, 2)]
        print(f"top eigenvalue(s): {', '.join(f'{v:.6g}' for v in e.eigenvalues)} ({e.method}, {e.n_matvecs} HVPs)")
        print(f"trace: {t.trace:.6g} ± {t.std_err:.2g} ({t.method}, {t.n_matvecs} HVPs); {obj.dim} parameters")
        if args.out:
            write_json(args.out, res)
        if args.plot and dens is not None:
            from htsr.landscape.plots import plot_density

            plot_density(dens, Path(args.plot) / "hessian_density.png")
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    return 0


def cmd_surface(args: argparse.Namespace) -> int:
    """Run ``htsr landscape surface``."""
    import numpy as np

    from htsr.errors import HtsrError
    from htsr.io import write_json, write_table
    from htsr.landscape.objective import Objective
    from htsr.landscape.surfaces import random_surface_1d, random_surface_2d

    msg = _check_common(args)
    if msg:
        return error(msg)
    if args.steps < 2 or not args.extent > 0:
        return error("--steps must be >= 2 and --range > 0")
    try:
        model = recipe_model(args.seed, args.epochs, args.weights)
        x, y, _, _ = digits_data()
        batch = (x[: args.samples], y[: args.samples])
        obj = Objective(model, batch)
        grid = np.linspace(-args.extent, args.extent, args.steps)
        kw = dict(seed=args.seed, ignore_biasbn=not args.keep_biasbn, bn_data=batch if args.bn else None)
        s = random_surface_1d(obj, grid, **kw) if args.dims == 1 else random_surface_2d(obj, grid, grid, **kw)
        df = s.to_pandas()
        print(f"{len(df)} points; loss min {np.nanmin(s.loss):.4g} max {np.nanmax(s.loss):.4g}; "
              f"{int(np.isnan(s.loss).sum())} NaN")
        if args.out:
            if args.out.endswith(".csv"):
                write_table(args.out, df)
            else:
                write_json(args.out, {"meta": s.meta, "points": df.to_dict(orient="list")})
        if args.plot:
            from htsr.landscape.plots import plot_contour, plot_surface_1d, plot_surface_3d

            d = Path(args.plot)
            if args.dims == 1:
                plot_surface_1d(s, d / "surface_1d.png")
            else:
                plot_contour(s, d / "surface_2d_contour.png")
                plot_surface_3d(s, d / "surface_2d_3d.png")
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    """Run ``htsr landscape connect``: exit 1 when the loss is non-finite on a path, 2 for bad input."""
    from htsr.errors import HtsrError
    from htsr.io import write_json
    from htsr.landscape.objective import NonFiniteLossError
    from htsr.landscape.paths import evaluate_curve, linear_path, train_bezier
    from htsr.training import seeded_loader

    msg = _check_common(args)
    if msg:
        return error(msg)
    try:
        ws = args.weights or [None, None]
        a = recipe_model(args.seed, args.epochs, ws[0])
        b = recipe_model(args.seed + 1, args.epochs, ws[1])
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    x, y, _, _ = digits_data()
    train_dl = seeded_loader(x, y, 50, args.seed)
    eval_dl = _chunks(x, y, args.samples, 100)
    results, out = [], {}
    try:
        if args.curve in ("linear", "both"):
            r = linear_path(a, b, eval_dl, num_points=args.points)
            results.append(r)
        if args.curve in ("bezier", "both"):
            curve, _ = train_bezier(a, b, train_dl, epochs=args.curve_epochs, seed=args.seed, progress=None)
            results.append(evaluate_curve(curve, eval_dl, num_points=args.points))
    except NonFiniteLossError as e:
        return error(str(e), 1)
    except (HtsrError, ValueError) as e:  # bad --points / --curve-epochs, named by the library
        return error(str(e))
    for r in results:
        m = r.metrics()
        out[r.kind] = {"t": r.t, "loss": r.loss, "error": r.error, **m}
        print(f"{r.kind}: train error along t: {' '.join(f'{100 * e:.1f}%' for e in r.error)}; "
              f"mc={m['mode_connectivity']:.4g}, peak={m['mode_connectivity_peak']:.4g}")
    try:
        if args.out:
            write_json(args.out, out)
        if args.plot:
            from htsr.landscape.plots import plot_path

            plot_path(results, Path(args.plot) / "mode_connectivity.png")
    except (OSError, ValueError) as e:
        return error(f"cannot write output: {e}")
    return 0


def cmd_cka(args: argparse.Namespace) -> int:
    """Run ``htsr landscape cka``."""
    from htsr.errors import HtsrError
    from htsr.io import write_json, write_table
    from htsr.landscape.cka import compare_models

    msg = _check_common(args)
    if msg:
        return error(msg)
    if args.estimator == "minibatch" and args.samples < 4:
        return error("--estimator minibatch needs --samples >= 4")
    layers = None
    if args.layers:
        layers = [None if n.strip() in ("output", "") else n.strip() for n in args.layers.split(",")]
    try:
        ws = args.weights or [None, None]
        a = recipe_model(args.seed, args.epochs, ws[0])
        b = recipe_model(args.seed + 1, args.epochs, ws[1])
        x, y, _, _ = digits_data()
        data = _chunks(x, y, args.samples, 100)
        if args.estimator == "minibatch":
            data = [d for d in data if d[0].shape[0] >= 4]
        soft = (lambda name, t: t.softmax(dim=-1) if name == "<output>" else t) if args.softmax else None
        table = compare_models(a, b, data, layers_a=layers, estimator=args.estimator, feature_fn=soft,
                               progress=False)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    print(f"linear CKA ({args.estimator}{', softmax outputs' if args.softmax else ''}) between seeds {args.seed} "
          f"and {args.seed + 1} on {table.attrs.get('n_samples', args.samples)} samples:")
    print(table.round(4).to_string())
    try:
        if args.out:
            if args.out.endswith(".csv"):
                write_table(args.out, table.rename_axis("layer_a").reset_index())
            else:
                write_json(args.out, {"estimator": args.estimator, "softmax": args.softmax, "seed": args.seed,
                                      "cka": {str(r): {str(c): float(v) for c, v in row.items()}
                                              for r, row in table.iterrows()},
                                      "attrs": {k: v for k, v in table.attrs.items()
                                                if isinstance(v, (int, float, str))}})
    except (OSError, ValueError) as e:
        return error(f"cannot write output: {e}")
    return 0


def cmd_sharpness(args: argparse.Namespace) -> int:
    """Run ``htsr landscape sharpness``."""
    from htsr.errors import HtsrError
    from htsr.io import write_json, write_table
    from htsr.landscape.sharpness import sharpness_table

    msg = _check_common(args)
    if msg:
        return error(msg)
    if args.batch_size < 1:  # (--iters and --rho are checked by the library)
        return error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        model = recipe_model(args.seed, args.epochs, args.weights)
        x, y, _, _ = digits_data()
        data = _chunks(x, y, args.samples, args.batch_size)
        table = sharpness_table(model, data, rhos=args.rho, ps=args.norm, adaptive=not args.no_adaptive,
                                n_iters=args.iters, seed=args.seed, max_batches=len(data), progress=False)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    print(f"worst-case {'plain' if args.no_adaptive else 'adaptive'} sharpness on {args.samples} samples "
          f"({int(table['n_batches'].iloc[0])} batches, {args.iters} Auto-PGD iterations):")
    print(table.round(5).to_string(index=False))
    try:
        if args.out:
            if args.out.endswith(".csv"):
                write_table(args.out, table)
            else:
                write_json(args.out, {"seed": args.seed, "rows": table.to_dict(orient="records")})
    except (OSError, ValueError) as e:
        return error(f"cannot write output: {e}")
    return 0
