"""SharpBalance's data split (numbers in, numbers out): which training samples each member trains on with SAM.

Given per-sample sharpness scores ``s_j(x)`` of every member j (an (M, N) array; SharpBalance's score is the
squared per-sample gradient norm, :func:`htsr.landscape.per_sample_grad_norms`):

* ``S_j`` = the ``int(k * N)`` samples with the highest ``s_j`` (``select="top"``, the paper's Fig. 1d) or the
  lowest (``select="bottom"``, what the public code's ``boosting_sam_split`` does with ``ascend=True``);
* ``U_i = union_{j != i} S_j``: what the *other* members find sharpest;
* ``R = D minus union_j S_j`` (sorted by index): the samples nobody selected;
* ``D_SAM^i = U_i + leftover share``, where the leftover rule is ``"stride"`` (``R[i::M]``, the public code's
  CIFAR-100 / TinyImageNet variant), ``"complement"`` (``R minus R[i::M]``, its CIFAR-10 ``_boost`` variant) or
  ``"none"`` (the figure's literal ``D_Normal^i = D minus U_i``);
* ``D_Normal^i = D minus D_SAM^i``.

Ties are broken by a stable sort (lower index first) so the split is deterministic; the reference's
``np.argsort`` (quicksort) and ``list(set(...))`` leave both to chance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from htsr.config import check_choice
from htsr.errors import ConfigError

SELECTS = ("top", "bottom")
LEFTOVERS = ("stride", "complement", "none")


def _scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ConfigError(f"scores must be an (M members, N samples) array, got shape {s.shape}")
    if s.shape[0] < 2:
        raise ConfigError(f"the split needs the scores of at least 2 members, got {s.shape[0]}")
    if s.shape[1] == 0:
        raise ConfigError("scores hold no samples")
    if not np.all(np.isfinite(s)):
        raise ConfigError("scores contain NaN or Inf")
    return s


def _check_k(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, int | float) or not 0 < k < 1:
        raise ConfigError(f"k must be in the open interval (0, 1), got {k!r}")
    return float(k)


def selected(scores_j: Any, k: float, select: str = "top") -> np.ndarray:
    """Sorted indices of the ``int(k * N)`` samples with the highest (``top``) or lowest (``bottom``) scores."""
    s = np.asarray(scores_j, dtype=np.float64).reshape(-1)
    k = _check_k(k)
    check_choice("select", select, SELECTS)
    total = int(s.size * k)
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-s if select == "top" else s, kind="stable")
    return np.sort(order[:total]).astype(np.int64)


def sam_mask(scores: Any, member: int, k: float = 0.5, *, select: str = "top", leftover: str = "stride"
             ) -> np.ndarray:
    """Boolean (N,) mask of ``D_SAM^member``: True where member ``member`` trains with SAM in phase 2."""
    s = _scores(scores)
    m, n = s.shape
    if isinstance(member, bool) or not isinstance(member, int | np.integer) or not 0 <= member < m:
        raise ConfigError(f"member must be an index in 0..{m - 1}, got {member!r}")
    check_choice("leftover", leftover, LEFTOVERS)
    sets = [selected(s[j], k, select) for j in range(m)]
    mask = np.zeros(n, dtype=bool)
    for j in range(m):
        if j != member:
            mask[sets[j]] = True
    if leftover != "none":
        anyone = np.zeros(n, dtype=bool)
        for idx in sets:
            anyone[idx] = True
        rest = np.flatnonzero(~anyone)  # sorted
        share = rest[int(member)::m]
        if leftover == "stride":
            mask[share] = True
        else:
            comp = np.ones(rest.size, dtype=bool)
            comp[int(member)::m] = False
            mask[rest[comp]] = True
    return mask


def sam_masks(scores: Any, k: float = 0.5, *, select: str = "top", leftover: str = "stride") -> np.ndarray:
    """(M, N) boolean masks, one row per member (:func:`sam_mask` for each)."""
    s = _scores(scores)
    return np.stack([sam_mask(s, i, k, select=select, leftover=leftover) for i in range(s.shape[0])])


def split_summary(masks: Any) -> dict[str, Any]:
    """Sizes of each member's SAM set, and the overlap between members' SAM sets (Jaccard)."""
    mk = np.asarray(masks, dtype=bool)
    sizes = mk.sum(1)
    m = mk.shape[0]
    jac = np.ones((m, m))
    for i in range(m):
        for j in range(m):
            if i != j:
                union = np.logical_or(mk[i], mk[j]).sum()
                jac[i, j] = np.logical_and(mk[i], mk[j]).sum() / union if union else float("nan")
    return {"sam_size": sizes.tolist(), "sam_fraction": (sizes / mk.shape[1]).tolist(), "jaccard": jac.tolist()}
