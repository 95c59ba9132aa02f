"""Eigenvalues lambda = sigma^2 of weight matrices, batched, on CPU or CUDA.

The default method forms the Gram matrix of the smaller side (M x M) and runs a
symmetric eigensolver on it, which is several times cheaper than a full SVD. Weights are
never downcast below float32; ``precision="float64"`` accumulates the Gram matrix and
solves in float64 (exact enough for every eigenvalue), ``"float32"`` is faster and keeps
the tail (the large eigenvalues, which power-law fits use) accurate to ~1e-6 relative.
``"auto"`` uses float64 on CUDA (cheap on datacenter GPUs; measured on an H200: a
4096x4096 plus an 11008x4096 matrix in 0.4 s, and float32 there moved alpha by 1e-2 through
the solver's noise in the small eigenvalues; on consumer GPUs with slow float64 pass
"float32") and on CPU unless the smaller side exceeds ``AUTO_FP64_MAX_DIM``.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import torch

Precision = Literal["auto", "float32", "float64"]
Method = Literal["gram", "svd"]

#: Matrices whose smaller side is at most this are solved in float64 under "auto".
AUTO_FP64_MAX_DIM = 2048

#: Gram matrices at least this wide are solved with LAPACK's two-stage tridiagonal reduction
#: (``?syevd_2stage``, eigenvalues only), keyed by the item size (8: float64, 4: float32).
#: Measured on the 2-core VM, one BLAS thread, under load: float64 2048: 0.63 s vs 0.92 s for
#: syevr, 4096: 4.5 s vs 9.5 s; float32 4096: 2.7 s vs 3.5 s, but 2048: 0.40 s vs 0.28 s.
#: The eigenvalues agree with syevr's to ~1e-15 of the largest (float64). float32 stays on syevr: with the
#: 2 BLAS threads large tensors run with, syevr took 1.64 s and two-stage 2.30 s at 4096 (quiet machine;
#: float64 two-stage still won, 2.98 s vs 3.31 s). A key absent here means "never".
TWO_STAGE_MIN_DIM = {8: 2048}


class NonFiniteError(ValueError):
    """The matrix holds NaN or Inf values (seen on the Gram diagonal: column norms squared)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' -> cuda when available, else cpu; validates explicit names."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def solver_eps(m: int, precision: Precision = "auto", method: Method = "gram", device: str = "cpu") -> float | None:
    """Machine epsilon of the Gram eigensolve for a matrix whose smaller side is ``m``.

    None for ``method="svd"`` (squared singular values carry no Gram noise floor).
    """
    if method == "svd":
        return None
    return float(torch.finfo(_dtype_for(m, precision, resolve_device(device).type)).eps)


def _dtype_for(m: int, precision: Precision, device_type: str = "cpu") -> torch.dtype:
    if precision == "float64":
        return torch.float64
    if precision == "float32":
        return torch.float32
    if precision == "auto":
        return torch.float64 if (m <= AUTO_FP64_MAX_DIM or device_type == "cuda") else torch.float32
    raise ValueError(f"unknown precision {precision!r}; expected 'auto', 'float32' or 'float64'")


def _cpu_gram(mat: np.ndarray) -> np.ndarray:
    """Gram matrix of the smaller side with BLAS syrk (half a matmul's flops, no copy).

    For a C-contiguous (n, m) array, ``mat.T`` is a Fortran-ordered (m, n) view, which is
    what BLAS wants: syrk(trans=0) on it gives mat^T mat (m <= n), syrk(trans=1) gives
    mat mat^T (n < m). Only the upper triangle is filled.
    """
    from scipy.linalg import blas

    if not mat.flags.c_contiguous:
        mat = np.ascontiguousarray(mat)
    f = blas.dsyrk if mat.dtype == np.float64 else blas.ssyrk
    n, m = mat.shape
    return f(1.0, mat.T, trans=0 if m <= n else 1, lower=0)


def eigenvalues(
    weights: torch.Tensor,
    *,
    device: str | torch.device | None = "cpu",
    precision: Precision = "auto",
    method: Method = "gram",
) -> np.ndarray:
    """Eigenvalues of W^T W for one (n, m) matrix or a batch (B, n, m).

    Returns a float64 numpy array of shape (min(n, m),) or (B, min(n, m)), ascending.
    ``method="svd"`` squares singular values instead (more accurate for tiny
    eigenvalues of ill-conditioned matrices, several times slower).
    """
    if not isinstance(weights, torch.Tensor):
        weights = torch.as_tensor(np.asarray(weights))
    if weights.ndim not in (2, 3):
        raise ValueError(f"expected a matrix (n, m) or a batch (B, n, m), got shape {tuple(weights.shape)}")
    dev = resolve_device(device)
    n, m = weights.shape[-2], weights.shape[-1]
    k = min(n, m)
    dtype = _dtype_for(k, precision, dev.type)
    w = weights.detach()
    if w.is_complex():
        raise ValueError("complex weights are not supported")
    w = w.to(device=dev, dtype=dtype)
    if method == "svd":
        if not bool(torch.isfinite(w.sum())):
            raise NonFiniteError("non-finite values in the matrix")
        s = torch.linalg.svdvals(w)
        lam = (s.to(torch.float64) ** 2).flip(-1)
        return lam.cpu().numpy()
    if method != "gram":
        raise ValueError(f"unknown eigen method {method!r}; expected 'gram' or 'svd'")
    if dev.type == "cpu" and (w.ndim == 2 or w.shape[0] == 1 or k >= 256):
        # per-matrix BLAS syrk + LAPACK syevd: fastest on CPU for all but tiny batched slices
        mats = [w] if w.ndim == 2 else list(w)
        out = np.stack([_cpu_eigvalsh(x.numpy()) for x in mats])
        return out[0] if w.ndim == 2 else out
    if n < m:
        w = w.transpose(-1, -2)
    if dev.type == "cuda" and dtype == torch.float32:
        # cuBLAS may run float32 products in TF32 (10-bit mantissa) under the user's global
        # settings; form the Gram in float64 (cheap on datacenter GPUs), solve in float32
        w64 = w.to(torch.float64)
        g = (w64.transpose(-1, -2) @ w64).to(torch.float32)
        del w64
    else:
        g = w.transpose(-1, -2) @ w
    if not bool(torch.isfinite(torch.diagonal(g, dim1=-2, dim2=-1)).all()):
        raise NonFiniteError("non-finite values in the matrix (or its Gram matrix overflows)")
    lam = torch.linalg.eigvalsh(g)
    lam = lam.to(torch.float64).clamp_min(0.0)
    return lam.cpu().numpy()


_TWO_STAGE: dict = {}


def _two_stage(dtype: np.dtype):
    """LAPACKE ``?syevd_2stage`` (jobz='N') from the OpenBLAS that numpy or scipy bundle, or None.

    scipy does not wrap the two-stage drivers, but the wheels' OpenBLAS exports them; called
    through ctypes, which releases the GIL. None (the caller uses syevr) when no bundled library
    exports the symbol, or ``HTSR_NO_TWO_STAGE`` is set.
    """
    key = np.dtype(dtype).char
    if key in _TWO_STAGE:
        return _TWO_STAGE[key]
    fn = None
    if not os.environ.get("HTSR_NO_TWO_STAGE") and key in "fd":
        fn = _find_two_stage(key)
    _TWO_STAGE[key] = fn
    return fn


def _find_two_stage(key: str):
    import ctypes
    import glob

    import scipy

    p = "d" if key == "d" else "s"
    libs = []
    # scipy's first: dsyrk (the Gram product) runs on its OpenBLAS threads, so the solve reuses them
    for mod in (scipy, np):
        base = os.path.dirname(os.path.dirname(os.path.abspath(mod.__file__)))
        libs += sorted(glob.glob(os.path.join(base, f"{mod.__name__}.libs", "lib*openblas*.so*")))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name, int_t in ((f"scipy_LAPACKE_{p}syevd_2stage64_", ctypes.c_int64),
                            (f"scipy_LAPACKE_{p}syevd_2stage", ctypes.c_int),
                            (f"LAPACKE_{p}syevd_2stage", ctypes.c_int)):
            f = getattr(lib, name, None)
            if f is None:
                continue
            f.restype = int_t
            f.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, int_t, ctypes.c_void_p, int_t,
                          ctypes.c_void_p]

            def solve(g: np.ndarray, f=f, int_t=int_t) -> np.ndarray:
                # g: the upper triangle of a symmetric matrix, column-major (dsyrk's output);
                # LAPACK_COL_MAJOR = 102; overwritten
                if not g.flags.f_contiguous:
                    g = np.asfortranarray(g)
                n = g.shape[0]
                w = np.empty(n, dtype=g.dtype)
                info = f(102, b"N", b"U", n, g.ctypes.data, n, w.ctypes.data)
                if info != 0:
                    raise np.linalg.LinAlgError(f"{p}syevd_2stage failed (info={info})")
                return w

            return solve
    return None


#: Gram matrices narrower than this are formed and solved by numpy alone (see :func:`_cpu_eigvalsh`).
NUMPY_MAX_DIM = 1024


def _numpy_gram(mat: np.ndarray) -> np.ndarray:
    """Gram matrix of the smaller side with numpy (which calls syrk for ``a.T @ a`` and releases the GIL)."""
    return mat.T @ mat if mat.shape[0] >= mat.shape[1] else mat @ mat.T


def _cpu_eigvalsh(w: np.ndarray) -> np.ndarray:
    # Small Grams: product and solve both through numpy's BLAS. Mixing scipy's syrk with numpy's eigvalsh
    # alternates two OpenBLAS thread pools whose idle threads spin, which measured 2.5x slower over MiniLM's 39
    # matrices (0.90 s vs 0.37 s, same process); numpy also releases the GIL for both, so worker threads overlap.
    g = _numpy_gram(w) if min(w.shape) < NUMPY_MAX_DIM else _cpu_gram(w)
    # a NaN/Inf weight makes its column's squared norm (a diagonal entry) non-finite
    if not np.isfinite(np.diagonal(g)).all():
        raise NonFiniteError("non-finite values in the matrix (or its Gram matrix overflows)")
    lim = TWO_STAGE_MIN_DIM.get(g.dtype.itemsize)
    two = _two_stage(g.dtype) if lim is not None and g.shape[0] >= lim else None
    if two is not None:
        lam = two(g)
    elif g.shape[0] >= NUMPY_MAX_DIM:
        # large: scipy's syevr is the fastest one-stage solver measured here (4096 fp32: 3.3 s vs
        # 5.5 s for numpy's syevd build and 3.2-4 s for torch); large layers run one at a time
        from scipy.linalg import eigh

        lam = eigh(g, lower=False, eigvals_only=True, driver="evr", check_finite=False, overwrite_a=True)
    else:
        # small: numpy's eigvalsh releases the GIL, so layers in worker threads run in
        # parallel (scipy's f2py wrappers hold it)
        lam = np.linalg.eigvalsh(g, UPLO="U")
    return np.clip(lam.astype(np.float64), 0.0, None)


# ------------------------------------------------------------------ tail-only spectrum
#: Smallest matrix side for which a tail-only spectrum is attempted at all.
TAIL_MIN_SIDE = 64


class TailTooSmallError(ValueError):
    """A tail-only spectrum was asked of a matrix too small for one (use the full solve)."""


class TopSpectrum:
    """The ``k`` largest eigenvalues of W^T W (ascending, float64), with what the solver knows.

    ``values``: Ritz values, each at most its eigenvalue (Cauchy interlacing). ``residuals``: the
    error estimate of each, min(r, r^2 / gap) with r = ||G u - theta u|| and the gap to the
    nearest other Ritz value (Kato-Temple; an estimate, as the gap is the Ritz values').
    ``trace``: the sum of all eigenvalues (= ||W||_F^2, from the Gram diagonal: exact, not
    estimated). ``m``: the number of eigenvalues (smaller side). ``converged``: the ``need``
    largest error estimates are at most ``rtol`` times their Ritz values (the lower ones may be
    less accurate, and stay lower bounds).
    ``basis``: the Krylov basis size used; ``stopped``: why it did not converge ("" when it did).
    """

    def __init__(self, values: np.ndarray, residuals: np.ndarray, trace: float, m: int, basis: int,
                 converged: bool, stopped: str = "") -> None:
        self.values, self.residuals, self.trace, self.m = values, residuals, trace, m
        self.basis, self.converged, self.stopped = basis, converged, stopped

    @property
    def k(self) -> int:
        return int(self.values.size)


def top_eigenvalues(
    weights: torch.Tensor,
    k: int,
    *,
    device: str | torch.device | None = "cpu",
    seed: int = 0,
    rtol: float = 1e-10,
    block: int | None = None,
    max_basis: int | None = None,
    need: int | None = None,
    floor: float = 0.0,
    max_rest_share: float | None = None,
) -> TopSpectrum:
    """The ``k`` largest eigenvalues of W^T W of one (n, m) matrix, by block Krylov + Rayleigh-Ritz.

    Everything runs in float64 (the Gram matrix included, whatever ``weights``' dtype): the
    returned eigenvalues are as accurate as a float64 full solve once converged. The Krylov
    basis grows by ``block`` vectors (default k/4, clamped to 32..128, fully reorthogonalised)
    until each of the ``need`` largest (default all k) Ritz values has an error estimate (see
    :class:`TopSpectrum`) <= rtol * theta (or theta + estimate <= ``floor``: known to lie below
    it), or the basis would exceed ``max_basis`` (default m/2;
    a basis of m/4 costs about a third of a dense solve's flops, one of m/2 about as many); then
    ``converged`` is False and the caller should solve the whole spectrum.

    ``max_rest_share``: give up early (``converged`` False, ``stopped`` says why) once a
    Rayleigh-Ritz step on a basis of max(2 blocks, 128 vectors) leaves more than this share of the trace
    outside the top k Ritz values (a full-rank matrix, when the caller needs the rest to vanish).

    Raises :class:`TailTooSmallError` when m < ``TAIL_MIN_SIDE`` or 2k > m (the top part would
    be no cheaper than the whole spectrum), and :class:`NonFiniteError` for NaN/Inf weights.
    """
    if not isinstance(weights, torch.Tensor):
        weights = torch.as_tensor(np.asarray(weights))
    if weights.ndim != 2:
        raise ValueError(f"a tail-only spectrum takes one matrix (n, m), got shape {tuple(weights.shape)}")
    n, m = weights.shape
    side = min(n, m)
    if side < TAIL_MIN_SIDE or not 1 <= k or 2 * k > side:
        raise TailTooSmallError(
            f"matrix {n}x{m} is too small for a tail-only spectrum of {k} eigenvalues (needs a smaller side of at "
            f"least max({TAIL_MIN_SIDE}, 2k = {2 * k})); use the full solve")
    dev = resolve_device(device)
    w = weights.detach().to(device=dev, dtype=torch.float64)
    if n < m:
        w = w.T
    g = w.T @ w
    del w
    diag = torch.diagonal(g)
    if not bool(torch.isfinite(diag).all()):
        raise NonFiniteError("non-finite values in the matrix (or its Gram matrix overflows)")
    trace = float(diag.sum())
    need = k if need is None else min(max(int(need), 1), k)
    b = int(block or min(128, max(32, k // 4)))
    cap = int(max_basis or side // 2)
    cap = max(cap, k + b)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    Q = torch.empty(side, cap + b, dtype=torch.float64, device=dev)
    GQ = torch.empty_like(Q)
    Q[:, :b] = torch.linalg.qr(torch.randn(side, b, generator=gen, dtype=torch.float64, device=dev))[0]
    L = 0
    theta = res = None
    converged = False
    stopped = ""
    while True:
        GQ[:, L:L + b] = g @ Q[:, L:L + b]
        L += b
        early = max_rest_share is not None and L == b * max(2, -(-128 // b)) and L < k + b
        if early or L >= k + b and ((L // b) % 2 == 0 or L + b > cap):
            T = Q[:, :L].T @ GQ[:, :L]
            T = (T + T.T) / 2
            th, S = torch.linalg.eigh(T)
            if max_rest_share is not None and trace - float(th[-k:].sum()) > max_rest_share * trace:
                stopped = f"{trace - float(th[-k:].sum()):.3g} of the trace {trace:.3g} lies outside the top {k}"
                theta, res = th[-k:], torch.full_like(th[-k:], math.inf)
                break
            if early:
                theta = None
            else:
                theta, S = th[-k:], S[:, -k:]
        if theta is not None and L >= k + b and ((L // b) % 2 == 0 or L + b > cap):
            R = GQ[:, :L] @ S - (Q[:, :L] @ S) * theta
            r = torch.linalg.vector_norm(R, dim=0)
            # error of each Ritz value: at most r (Weyl) and, for an isolated one, r^2 / gap
            # (Kato-Temple; the gap measured to the nearest other Ritz value of the basis)
            d = th[1:] - th[:-1]  # th ascending, length L; the top k are th[L - k:]
            inf = torch.full((1,), math.inf, dtype=th.dtype, device=th.device)
            gaps = torch.minimum(d[L - k - 1:], torch.cat([d[L - k:], inf]))
            res = torch.minimum(r, r * r / gaps.clamp_min(torch.finfo(torch.float64).tiny))
            ok = (res <= rtol * theta.clamp_min(torch.finfo(torch.float64).tiny)) | (theta + res <= floor)
            if bool(ok[k - need:].all()):
                converged = True
                break
            if L + b > cap:
                break
        # next block: G Q_last, orthogonalised twice against the whole basis (CGS2), then QR
        Z = GQ[:, L - b:L].clone()
        for _ in range(2):
            Z -= Q[:, :L] @ (Q[:, :L].T @ Z)
        Qn, Rn = torch.linalg.qr(Z)
        scale = float(torch.linalg.vector_norm(GQ[:, L - b:L], dim=0).max())
        weak = torch.diagonal(Rn).abs() <= 1e-8 * max(scale, torch.finfo(torch.float64).tiny)
        if bool(weak.any()):
            # an (almost) invariant subspace (e.g. a low-rank matrix): keep the new directions,
            # replace the lost ones with random vectors orthogonal to everything so far
            good = Qn[:, ~weak]
            Z = torch.randn(side, int(weak.sum()), generator=gen, dtype=torch.float64, device=dev)
            basis = torch.cat([Q[:, :L], good], 1)
            for _ in range(2):
                Z -= basis @ (basis.T @ Z)
            Qn = torch.cat([good, torch.linalg.qr(Z)[0]], 1)
        Q[:, L:L + b] = Qn
    vals = theta.to("cpu").numpy().clip(0.0, None)
    if not converged and not stopped:
        stopped = f"the top {k} eigenvalues did not converge within a Krylov basis of {L}"
    return TopSpectrum(vals, res.to("cpu").numpy(), trace, side, L, converged, stopped)
