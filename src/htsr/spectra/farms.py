"""FARMS: the ESD averaged over fixed-aspect-ratio submatrices (Fixed-Aspect-Ratio Matrix Subsampling).

FARMS (ICML 2025, code HUST-AI-HYZ/FARMS ``lib/sampling.py``) removes the aspect-ratio bias of the ESD: an
n x m matrix's eigenvalue density depends on Q = n/m even for i.i.d. entries, so alphas of layers of different
shapes are not comparable. FARMS cuts the matrix into a grid of r x c windows (c = int(r * Q_ratio); Q_ratio 1
is square), pools the squared singular values of all windows into one ESD and fits it once.

Window placement is the reference's "fixed-ops" mode (deterministic): along a side of length L with window w
and ``windows`` (ops) per side, stride = max(1, floor((L - w) / (ops - 1))), count = min(ops, floor((L - w) /
stride) + 1), start_i = min(i * stride, L - w); the grid is rows x columns. With ``stride`` given instead, windows
start every ``stride`` along each side (the reference's ``step_size`` mode). Differences from the reference:
matrices are oriented with rows >= columns first (eigenvalues do not depend on orientation; the reference's
linear branch takes the weight as stored), r defaults to half the smaller side (the reference's default is
100; its LLaMA runs use 2000 on 4096-wide matrices) so that every matrix gets the full grid and pooled ESDs have
equal sizes, ops = 1 gives one window instead of a division by zero, and convolution kernels use the same
windows on every kernel-position slice (the reference's conv branch ignores r and ops).
"""

from __future__ import annotations

import math

import torch

#: Most elements stacked into one batched eigensolve (bounds the memory of the window batch).
BATCH_ELEMENTS = 1 << 25


def window_shape(rows: int, cols: int, r: int | None, q: float) -> tuple[int, int]:
    """(window rows, window columns) for a matrix oriented rows >= cols.

    r=None: half the smaller side (columns shrunk further when q * r would not fit), so that every matrix
    gets the full ``windows x windows`` grid and pooled ESDs of different layers have the same size (the
    paper's LLaMA runs use r=2000 on 4096-wide matrices)."""
    if r is None:
        r = max(1, min(rows, cols) // 2)
        if int(r * q) > cols:
            r = max(1, int(cols / q))
            while int(r * q) > cols and r > 1:  # int rounding
                r -= 1
    return r, max(int(r * q), 1)


def window_error(rows: int, cols: int, r: int | None, q: float) -> str:
    """Why FARMS windows cannot be cut from a rows x cols matrix (oriented rows >= cols), or ''."""
    rows, cols = max(rows, cols), min(rows, cols)
    wr, wc = window_shape(rows, cols, r, q)
    if wr > rows or wc > cols:
        return (f"FARMS window {wr}x{wc} (farms_rows={r}, farms_q={q:g}) is larger than the matrix {rows}x{cols} "
                "(rows >= columns); lower farms_rows or leave it unset")
    if min(wr, wc) < 2:
        return f"FARMS window {wr}x{wc} has fewer than 2 eigenvalues; raise farms_rows or farms_q"
    return ""


def starts(length: int, window: int, windows: int, stride: int | None = None) -> list[int]:
    """Start offsets of the windows along one side (the reference's fixed-ops rule, or a fixed stride)."""
    span = length - window
    if span < 0:
        raise ValueError(f"window {window} is longer than the side {length}")
    if stride is not None:
        return list(range(0, span + 1, stride))
    if windows <= 1 or span == 0:
        return [0]
    step = max(1, span // (windows - 1))
    count = min(windows, span // step + 1)
    return [min(i * step, span) for i in range(count)]


def grid(rows: int, cols: int, r: int | None = None, q: float = 1.0, windows: int = 10,
         stride: int | None = None) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The window shape and the (row, column) starts of every window of a matrix oriented rows >= cols."""
    wr, wc = window_shape(rows, cols, r, q)
    return (wr, wc), [(i, j) for i in starts(rows, wr, windows, stride) for j in starts(cols, wc, windows, stride)]


def farms_eigenvalues(mats: torch.Tensor, *, r: int | None = None, q: float = 1.0, windows: int = 10,
                      stride: int | None = None, device: str = "cpu", precision: str = "auto",
                      method: str = "gram") -> tuple:
    """Pooled eigenvalues (sigma^2) of every FARMS window of every matrix of ``mats`` (B, n, m) or (n, m).

    Returns ``(eigenvalues ascending (float64 numpy), number of windows, (window rows, window cols))``. The
    windows are solved in batches of at most :data:`BATCH_ELEMENTS` elements through
    :func:`htsr.spectra.eigen.eigenvalues` (batched on CUDA; BLAS syrk + LAPACK per window on CPU).
    """
    import numpy as np

    from htsr.spectra.eigen import eigenvalues

    if mats.ndim == 2:
        mats = mats.unsqueeze(0)
    if mats.shape[-2] < mats.shape[-1]:
        mats = mats.transpose(-1, -2)
    rows, cols = mats.shape[-2], mats.shape[-1]
    err = window_error(rows, cols, r, q)
    if err:
        raise ValueError(err)
    (wr, wc), pos = grid(rows, cols, r, q, windows, stride)
    per = max(1, BATCH_ELEMENTS // (wr * wc))
    jobs = [(b, i, j) for b in range(mats.shape[0]) for i, j in pos]
    out = []
    for k in range(0, len(jobs), per):
        batch = torch.stack([mats[b, i:i + wr, j:j + wc] for b, i, j in jobs[k:k + per]])
        out.append(np.asarray(eigenvalues(batch, device=device, precision=precision, method=method)).ravel())
    lam = np.sort(np.concatenate(out))
    return lam, len(jobs), (wr, wc)


def check_params(r: int | None, q: float, windows: int, stride: int | None) -> str:
    """Why FARMS parameters are invalid regardless of the matrix, or ''."""
    if r is not None and r < 2:
        return f"farms_rows must be >= 2 (or None: half the smaller side), got {r}"
    if not (isinstance(q, int | float) and math.isfinite(q) and q > 0):
        return f"farms_q (window columns / window rows) must be > 0, got {q}"
    if windows < 1:
        return f"farms_windows (windows per side) must be >= 1, got {windows}"
    if stride is not None and stride < 1:
        return f"farms_stride must be >= 1 (or None: derived from farms_windows), got {stride}"
    return ""
