"""Train-time memorization mitigations: spectral-norm regularization, loss truncation, example-tied dropout.

Each is a :class:`~htsr.memorization.training.Regularizer` for :func:`~htsr.memorization.training.train_testbed`
(``loss(model, ids, idx)`` plus callbacks), so all train on the one loop.

* :class:`SpectralNormPenalty` (reference ``utils/spectral_reg.py``): loss += (lambda/2) * sum of the largest
  singular values of every non-embedding, non-LayerNorm weight matrix of the blocks, each estimated with one
  power-iteration step per training step (the vectors persist across steps). GPT-2's fused QKV projection is split
  into 3*heads column blocks and the attention output projection into heads row blocks, one sigma each. The
  reference penalises sigma, not sigma^2; so does this.
* :class:`LossTruncation` (reference ``utils/dropper.py``, after Kang & Hashimoto): per-sequence losses go into a
  ring buffer of ``window`` values; every ``recompute`` samples the (1 - dropc) percentile is recomputed; sequences
  whose loss is >= the cutoff get weight 0 (none are dropped during the first ``min_count`` samples).
* :class:`ExampleTiedDropout` (reference ``utils/dropout.py``, after Maini et al. 2023): applied to every block's
  input. The first ``p_fixed`` fraction of the hidden *channels* is always kept; each other channel is kept with
  probability ``p_mem`` under a mask fixed per training example. At evaluation the memorization channels are
  zeroed and the generalization channels scaled by (p_fixed + p_mem) / p_fixed. Reference bug fixed: the
  reference split a (batch, tokens, hidden) tensor along dimension 1, i.e. token *positions*; channels are masked
  here. Masks are independent per block (seeded by ``seed`` and the block index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.memorization.errors import MemorizationError
from htsr.memorization.models import out_in_weight
from htsr.memorization.training import lm_losses
from htsr.training import Callback


def _blocks(model: nn.Module) -> tuple[str, list[nn.Module], dict[str, nn.Module]]:
    from htsr.nn import LayoutError, find_layout

    try:
        layout = find_layout(model)
    except LayoutError as e:
        raise MemorizationError(str(e)) from None
    mats = {n: m for blk in layout.layers for n, m in blk.items()}
    return layout.blocks_path, layout.blocks, mats


class SpectralNormPenalty:
    """Loss = mean LM loss + (lam / 2) * sum of sigma_max over the blocks' weight matrices (see module doc)."""

    def __init__(self, model: nn.Module, lam: float = 0.01, seed: int = 0):
        if not lam > 0:
            raise MemorizationError(f"spectral-norm lambda must be > 0, got {lam}")
        self.lam = float(lam)
        self.seed = seed
        n_head = int(getattr(getattr(model, "config", None), "n_head", 1) or 1)
        _, _, mats = _blocks(model)
        g = torch.Generator().manual_seed(seed)
        self.groups: list[tuple[nn.Module, str, int, int]] = []  # module, split axis, n_split
        self.u: list[torch.Tensor] = []
        for name, mod in mats.items():
            w = out_in_weight(mod)
            if name.endswith("attn.c_attn") and w.shape[0] % (3 * n_head) == 0:
                axis, parts = 0, 3 * n_head
            elif name.endswith("attn.c_proj") and w.shape[1] % n_head == 0:
                axis, parts = 1, n_head
            else:
                axis, parts = 0, 1
            self.groups.append((mod, name, axis, parts))
            rows = w.shape[0] // parts if axis == 0 else w.shape[0]
            for _ in range(parts):
                u = torch.randn(rows, generator=g)
                self.u.append(u / u.norm())

    def _pieces(self) -> list[torch.Tensor]:
        out = []
        for mod, _, axis, parts in self.groups:
            w = out_in_weight(mod)
            out.extend(torch.chunk(w, parts, dim=axis))
        return out

    def penalty(self) -> torch.Tensor:
        """(lam/2) * sum sigma, one power-iteration step per call (updates the persisted vectors)."""
        total = None
        for i, w in enumerate(self._pieces()):
            u = self.u[i].to(w.device, w.dtype)
            with torch.no_grad():
                v = w.t() @ u
                v = v / (v.norm() + 1e-12)
                u = w @ v
                u = u / (u.norm() + 1e-12)
                self.u[i] = u.detach()
            sigma = u @ w @ v
            total = sigma if total is None else total + sigma
        assert total is not None
        return 0.5 * self.lam * total

    def loss(self, model: nn.Module, ids: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return lm_losses(model, ids).mean() + self.penalty()

    def callbacks(self) -> Sequence[Callback]:
        return ()

    def to_extra(self) -> dict[str, Any]:
        return {"regularizer": {"name": "spectral_norm", "lam": self.lam, "seed": self.seed}}


class LossTruncation:
    """Drop (weight 0) the sequences whose loss is at or above the running (1 - dropc) percentile."""

    def __init__(self, dropc: float = 0.05, window: int = 10000, recompute: int = 10000, min_count: int = 10000):
        if not 0 < dropc < 1:
            raise MemorizationError(f"dropc must be in (0, 1), got {dropc}")
        if window < 1 or recompute < 1 or min_count < 0:
            raise MemorizationError("window and recompute must be >= 1 and min_count >= 0")
        self.dropc, self.window, self.recompute, self.min_count = float(dropc), window, recompute, min_count
        self.vals = np.zeros(window, dtype=np.float64)
        self.count = 0
        self.cur = 0
        self.since = 0
        self.cutoff = float("inf")
        self.n_dropped = 0

    def mask(self, losses: torch.Tensor) -> torch.Tensor:
        """1 for kept, 0 for dropped sequences; records the losses (the reference's ``LossDropper``)."""
        vals = losses.detach().cpu().double().numpy().ravel()
        n = vals.size
        self.count += n
        self.since += n
        for v in vals:
            self.vals[self.cur] = v
            self.cur = (self.cur + 1) % self.window
        if self.count <= self.window or self.count < self.min_count:  # buffer filling / warm-up: keep all
            return torch.ones_like(losses)
        if self.since > self.recompute or not np.isfinite(self.cutoff):
            self.cutoff = float(np.percentile(self.vals, 100.0 * (1.0 - self.dropc)))
            self.since = 0
        keep = (losses.detach() < self.cutoff).to(losses.dtype)
        self.n_dropped += int((keep == 0).sum())
        return keep

    def loss(self, model: nn.Module, ids: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        losses = lm_losses(model, ids)
        return (losses * self.mask(losses)).mean()

    def callbacks(self) -> Sequence[Callback]:
        return ()

    def to_extra(self) -> dict[str, Any]:
        return {"regularizer": {"name": "loss_truncation", "dropc": self.dropc, "window": self.window,
                                "recompute": self.recompute, "min_count": self.min_count}}


class ExampleTiedDropout:
    """Example-tied dropout on every block's input channels (see the module docstring)."""

    def __init__(self, model: nn.Module, n_examples: int, p_fixed: float = 0.2, p_mem: float = 0.1, seed: int = 0):
        if not 0 < p_fixed < 1 or not 0 < p_mem <= 1:
            raise MemorizationError(f"need 0 < p_fixed < 1 and 0 < p_mem <= 1, got {p_fixed}, {p_mem}")
        if n_examples < 1:
            raise MemorizationError(f"n_examples must be >= 1, got {n_examples}")
        self.p_fixed, self.p_mem, self.seed, self.n_examples = float(p_fixed), float(p_mem), seed, int(n_examples)
        _, blocks, _ = _blocks(model)
        d = int(getattr(model.config, "n_embd", None) or model.config.hidden_size)
        self.n_fixed = max(1, int(round(p_fixed * d)))
        self.d = d
        self.masks = []
        for b in range(len(blocks)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + b)
            mem = (torch.rand(n_examples, d - self.n_fixed, generator=g) < p_mem).float()
            self.masks.append(torch.cat([torch.ones(n_examples, self.n_fixed), mem], dim=1))
        scale = (p_fixed + p_mem) / p_fixed
        self.eval_mask = torch.cat([torch.full((self.n_fixed,), scale), torch.zeros(d - self.n_fixed)])
        self.idx: torch.Tensor | None = None
        self.handles = [blk.register_forward_pre_hook(self._hook(b), with_kwargs=True)
                        for b, blk in enumerate(blocks)]
        model._htsr_example_tied_dropout = self  # keeps the hooks' owner alive with the model

    def _hook(self, b: int):
        def hook(mod: nn.Module, args: tuple, kwargs: dict):
            if args:
                h, rest = args[0], args[1:]
            else:
                h, rest = kwargs["hidden_states"], ()
            if mod.training:
                if self.idx is None:
                    raise MemorizationError("example-tied dropout needs the batch's example indices in training")
                m = self.masks[b][self.idx.cpu()].to(h.device, h.dtype).unsqueeze(1)
            else:
                m = self.eval_mask.to(h.device, h.dtype)
            h = h * m
            if args:
                return (h, *rest), kwargs
            kw = dict(kwargs)
            kw["hidden_states"] = h
            return args, kw
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def loss(self, model: nn.Module, ids: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if int(idx.max()) >= self.n_examples:
            raise MemorizationError(f"example index {int(idx.max())} >= n_examples={self.n_examples}")
        self.idx = idx
        try:
            return lm_losses(model, ids).mean()
        finally:
            self.idx = None

    def callbacks(self) -> Sequence[Callback]:
        return ()

    def to_extra(self) -> dict[str, Any]:
        return {"regularizer": {"name": "example_tied_dropout", "p_fixed": self.p_fixed, "p_mem": self.p_mem,
                                "seed": self.seed, "n_examples": self.n_examples}}


def reattach(model: nn.Module, extra: dict[str, Any]) -> None:
    """Re-install a checkpoint's architecture-changing regularizer (example-tied dropout) on a loaded model."""
    reg = extra.get("regularizer") or {}
    if reg.get("name") == "example_tied_dropout":
        ExampleTiedDropout(model, reg["n_examples"], reg["p_fixed"], reg["p_mem"], reg["seed"])


REGULARIZERS = ("spectral_norm", "loss_truncation", "example_tied_dropout")


#: Hyper-parameters each regularizer accepts.
REGULARIZER_HP: dict[str, tuple[str, ...]] = {
    "spectral_norm": ("lam",), "loss_truncation": ("dropc", "window", "recompute", "min_count"),
    "example_tied_dropout": ("p_fixed", "p_mem"),
}


def make_regularizer(name: str, model: nn.Module, n_examples: int, seed: int = 0, **hp: Any):
    """A regularizer by name with the reference's defaults (lam 0.01 / dropc 0.05 / p_fixed 0.2, p_mem 0.1).

    Loss truncation's window, recompute interval and warm-up default to the reference's 10,000 samples, which is
    about half an epoch of its 27k-sequence training set; they are capped at half an epoch of ``n_examples`` so
    that truncation starts on a smaller set too (with 10k it would never drop anything)."""
    if name not in REGULARIZER_HP:
        raise MemorizationError(f"unknown regularizer {name!r}; expected one of {', '.join(REGULARIZERS)}")
    unknown = sorted(set(hp) - set(REGULARIZER_HP[name]))
    if unknown:
        raise MemorizationError(f"{name} takes no hyper-parameter(s) {unknown}; expected {list(REGULARIZER_HP[name])}")
    if name == "spectral_norm":
        return SpectralNormPenalty(model, hp.get("lam", 0.01), seed)
    if name == "loss_truncation":
        n = min(10000, max(1, int(n_examples) // 2))
        return LossTruncation(**{"window": n, "recompute": n, "min_count": n, **hp})
    return ExampleTiedDropout(model, n_examples, hp.get("p_fixed", 0.2), hp.get("p_mem", 0.1), seed)
