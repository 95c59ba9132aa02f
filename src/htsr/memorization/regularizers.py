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

from htsr.memorization.config import (
    REGULARIZERS,
    ExampleTiedDropoutConfig,
    LossTruncationConfig,
    RegularizerConfig,
    SpectralNormConfig,
)
from htsr.memorization.errors import MemorizationError
from htsr.memorization.training import lm_losses
from htsr.nn import Layout, LayoutError, find_layout, weight_2d
from htsr.training import Callback

__all__ = ["ExampleTiedDropout", "LossTruncation", "REGULARIZERS", "SpectralNormPenalty", "make_regularizer",
           "reattach"]


def _layout(model: nn.Module) -> Layout:
    try:
        return find_layout(model)
    except LayoutError as e:
        raise MemorizationError(str(e)) from None


class SpectralNormPenalty:
    """Loss = mean LM loss + (lam / 2) * sum of sigma_max over the blocks' weight matrices (see module doc)."""

    def __init__(self, model: nn.Module, *, config: SpectralNormConfig | None = None, seed: int = 0, **hp: Any):
        self.config = (config or SpectralNormConfig()).replace(**hp)
        self.lam = self.config.lam
        self.seed = seed
        n_head = int(getattr(getattr(model, "config", None), "n_head", 1) or 1)
        mats = {n: m for blk in _layout(model).layers for n, m in blk.items()}
        g = torch.Generator().manual_seed(seed)
        self.groups: list[tuple[nn.Module, str, int, int]] = []  # module, split axis, n_split
        self.u: list[torch.Tensor] = []
        for name, mod in mats.items():
            w = weight_2d(mod)
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
            w = weight_2d(mod, differentiable=True)
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
        return {"regularizer": {"name": "spectral_norm", **self.config.to_dict(), "seed": self.seed}}


class LossTruncation:
    """Drop (weight 0) the sequences whose loss is at or above the running (1 - dropc) percentile."""

    def __init__(self, *, config: LossTruncationConfig | None = None, **hp: Any):
        cfg = (config or LossTruncationConfig()).replace(**hp)
        # unset sizes: the reference's 10,000 samples (make_regularizer caps them for small training sets)
        cfg = cfg.replace(window=cfg.window or 10000, recompute=cfg.recompute or 10000,
                          min_count=10000 if cfg.min_count is None else cfg.min_count)
        self.config = cfg
        self.dropc, self.window, self.recompute, self.min_count = cfg.dropc, cfg.window, cfg.recompute, cfg.min_count
        window = self.window
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
        return {"regularizer": {"name": "loss_truncation", **self.config.to_dict()}}


class ExampleTiedDropout:
    """Example-tied dropout on every block's input channels (see the module docstring)."""

    def __init__(self, model: nn.Module, n_examples: int, *, config: ExampleTiedDropoutConfig | None = None,
                 seed: int = 0, **hp: Any):
        if not isinstance(n_examples, int) or n_examples < 1:
            raise MemorizationError(f"n_examples must be an integer >= 1, got {n_examples!r}")
        self.config = (config or ExampleTiedDropoutConfig()).replace(**hp)
        p_fixed, p_mem = self.config.p_fixed, self.config.p_mem
        self.p_fixed, self.p_mem, self.seed, self.n_examples = p_fixed, p_mem, seed, int(n_examples)
        blocks = _layout(model).blocks
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
        return {"regularizer": {"name": "example_tied_dropout", **self.config.to_dict(), "seed": self.seed,
                                "n_examples": self.n_examples}}


def reattach(model: nn.Module, extra: dict[str, Any]) -> None:
    """Re-install a checkpoint's architecture-changing regularizer (example-tied dropout) on a loaded model."""
    reg = extra.get("regularizer") or {}
    if not isinstance(reg, dict):
        raise MemorizationError(f"the checkpoint's regularizer entry must be a mapping, got {reg!r}")
    if reg.get("name") == "example_tied_dropout":
        rest = {k: v for k, v in reg.items() if k not in ("name", "seed", "n_examples")}
        n, seed = reg.get("n_examples"), reg.get("seed", 0)
        if not isinstance(n, int) or not isinstance(seed, int):
            raise MemorizationError(f"the checkpoint's example-tied dropout needs integer n_examples and seed, got "
                                    f"{n!r}, {seed!r}")
        ExampleTiedDropout(model, n, config=ExampleTiedDropoutConfig.from_dict(rest), seed=seed)


def make_regularizer(name: str | RegularizerConfig, model: nn.Module, n_examples: int, seed: int = 0, *,
                     config: RegularizerConfig | None = None, **hp: Any):
    """A regularizer by name (or config) with its config's defaults (:mod:`htsr.memorization.config`:
    lam 0.01 / dropc 0.05 / p_fixed 0.2, p_mem 0.1) and ``hp`` overrides.

    Loss truncation's window, recompute interval and warm-up default to the reference's 10,000 samples, which is
    about half an epoch of its 27k-sequence training set; they are capped at half an epoch of ``n_examples`` so
    that truncation starts on a smaller set too (with 10k it would never drop anything)."""
    if isinstance(name, RegularizerConfig):
        name, config = name.method, name
    cls = REGULARIZERS.get(name)
    if config is not None and not isinstance(config, cls):
        raise MemorizationError(f"config {type(config).__name__} is not the config of {name!r} ({cls.__name__})")
    cfg = (config or cls()).replace(**hp) if hp else (config or cls())
    if isinstance(cfg, SpectralNormConfig):
        return SpectralNormPenalty(model, config=cfg, seed=seed)
    if isinstance(cfg, LossTruncationConfig):
        n = min(10000, max(1, int(n_examples) // 2))
        return LossTruncation(config=cfg.replace(window=cfg.window or n, recompute=cfg.recompute or n,
                                                 min_count=n if cfg.min_count is None else cfg.min_count))
    return ExampleTiedDropout(model, n_examples, config=cfg, seed=seed)
