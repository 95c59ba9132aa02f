"""1-D viscous Burgers data made by a numerical solver: ``u_t + u u_x = nu u_xx`` on the periodic unit
interval, the operator-learning benchmark of the FNO paper (Li et al., ICLR 2021): u0 -> u(T=1), initial
conditions from the Gaussian random field N(0, 625 (-Laplacian + 25 I)^-2) with zero mean. The default
viscosity is nu = 0.05 (the FNO paper's is 0.1, at which u(1) has decayed to about 2% of u0's amplitude and is
nearly a single decaying mode; at 0.05 shocks form and about 15% remains).

The solver is pseudo-spectral (FFT in space, 2/3-rule dealiasing of the nonlinear term) with a 4th-order
integrating-factor Runge-Kutta step (diffusion integrated exactly), vectorised over samples. Solutions are
computed on ``solver_grid`` points and subsampled to ``n_grid``. Everything is seeded.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from htsr.errors import ConfigError


def grf_initial_conditions(n_samples: int, n_grid: int, seed: int, *, sigma: float = 25.0, tau: float = 5.0,
                           gamma: float = 2.0) -> np.ndarray:
    """Samples of the zero-mean periodic GRF with covariance ``sigma^2 (-Laplacian + tau^2 I)^-gamma`` on
    ``n_grid`` points of [0, 1) (Karhunen-Loeve in the Fourier basis), shape (n_samples, n_grid), float64."""
    if n_samples < 1 or n_grid < 4 or n_grid % 2:
        raise ConfigError(f"need n_samples >= 1 and an even n_grid >= 4, got {n_samples}, {n_grid}")
    rng = np.random.default_rng(seed)
    k = np.arange(n_grid // 2 + 1)
    sqrt_eig = sigma * ((2 * np.pi * k) ** 2 + tau**2) ** (-gamma / 2)
    sqrt_eig[0] = 0.0  # zero mean
    sqrt_eig[-1] = 0.0  # the Nyquist mode has no sine partner
    xi = rng.standard_normal((n_samples, k.size)) + 1j * rng.standard_normal((n_samples, k.size))
    coef = n_grid * sqrt_eig * xi / np.sqrt(2.0)
    return np.fft.irfft(coef, n=n_grid, axis=-1)


def solve_burgers(u0: np.ndarray, *, nu: float = 0.1, t_end: float = 1.0, dt: float = 1e-3) -> np.ndarray:
    """u(t_end) for initial states ``u0`` of shape (batch, n) on the periodic unit interval."""
    u0 = np.atleast_2d(np.asarray(u0, dtype=np.float64))
    n = u0.shape[-1]
    if n < 4 or n % 2:
        raise ConfigError(f"the grid size must be even and >= 4, got {n}")
    if not (nu > 0 and t_end > 0 and dt > 0):
        raise ConfigError(f"nu, t_end and dt must be > 0, got {nu}, {t_end}, {dt}")
    steps = int(np.ceil(t_end / dt - 1e-9))
    h = t_end / steps
    k = 2 * np.pi * np.fft.rfftfreq(n, d=1.0 / n)
    dealias = (np.abs(np.fft.rfftfreq(n, d=1.0 / n)) < n / 3).astype(np.float64)
    e = np.exp(-nu * k**2 * h)
    e2 = np.exp(-nu * k**2 * h / 2)
    ik_half = -0.5j * k * dealias

    def nonlinear(v: np.ndarray) -> np.ndarray:  # Fourier transform of -(u^2 / 2)_x, dealiased
        u = np.fft.irfft(v, n=n, axis=-1)
        return ik_half * np.fft.rfft(u * u, axis=-1)

    v = np.fft.rfft(u0, axis=-1)
    for _ in range(steps):
        a = h * nonlinear(v)
        b = h * nonlinear(e2 * (v + a / 2))
        c = h * nonlinear(e2 * v + b / 2)
        d = h * nonlinear(e * v + e2 * c)
        v = e * v + (e * a + 2 * e2 * (b + c) + d) / 6
    out = np.fft.irfft(v, n=n, axis=-1)
    if not np.all(np.isfinite(out)):
        raise ConfigError(f"the Burgers solver diverged (dt={dt} too large for these initial conditions)")
    return out


@functools.lru_cache(maxsize=4)
def _dataset(n_samples: int, n_grid: int, solver_grid: int, nu: float, dt: float, seed: int):
    u0 = grf_initial_conditions(n_samples, solver_grid, seed)
    ut = solve_burgers(u0, nu=nu, dt=dt)
    step = solver_grid // n_grid
    return u0[:, ::step].astype(np.float32), ut[:, ::step].astype(np.float32)


def burgers_dataset(n_samples: int, *, n_grid: int = 64, solver_grid: int = 128, nu: float = 0.05, dt: float = 1.25e-3,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(u0, u1)`` float32 arrays of shape (n_samples, n_grid): initial states and solutions at T = 1."""
    if solver_grid % n_grid:
        raise ConfigError(f"solver_grid ({solver_grid}) must be a multiple of n_grid ({n_grid})")
    u0, ut = _dataset(int(n_samples), int(n_grid), int(solver_grid), float(nu), float(dt), int(seed))
    return u0.copy(), ut.copy()


def burgers_split(fraction: float = 1.0, seed: int = 0, *, n_pool: int = 512, n_test: int = 128,
                  data_seed: int = 0, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(u0_train, u1_train, u0_test, u1_test)``: one dataset of ``n_pool + n_test`` solutions (``data_seed``),
    the last ``n_test`` for testing, a random ``fraction`` of the pool (``seed``) for training."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    if n_pool < 1 or n_test < 1:
        raise ConfigError(f"n_pool and n_test must be >= 1, got {n_pool}, {n_test}")
    u0, ut = burgers_dataset(n_pool + n_test, seed=data_seed, **kw)
    k = max(1, int(round(fraction * n_pool)))
    idx = np.sort(np.random.default_rng([seed, 2]).choice(n_pool, size=k, replace=False))
    t = torch.from_numpy
    return t(u0[idx]), t(ut[idx]), t(u0[n_pool:]), t(ut[n_pool:])


def nrmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over samples of ``||pred - target||_2 / ||target||_2`` (PDEBench's normalised RMSE)."""
    num = torch.linalg.vector_norm(pred - target, dim=-1)
    den = torch.linalg.vector_norm(target, dim=-1).clamp_min(1e-12)
    return float((num / den).mean())
