"""Subnet and BalancedSubnet unlearning (TinyMem reference ``random_subnet.py`` / ``random_subnet_greedy.py``).

Only the MLP weight matrices (GPT-2 ``c_fc`` and ``c_proj``; the up/gate/down projections of other families) are
masked, in every layer. Each gets a score tensor S (Kaiming-uniform init, seeded); the mask zeros the ``ratio``
fraction of entries with the smallest |S| in that tensor and keeps the rest (edge-popup). The forward pass uses
W * mask with a straight-through gradient to S; the weights are frozen. S is optimised with SGD (lr 0.1,
momentum 0.9, weight decay 5e-4; batch 64) for ``epochs`` passes, and the final mask is baked in (W <- W * mask).

* Subnet: batches of M, objective maximise CE(M) (loss = -CE).
* BalancedSubnet: batches of shuffled M ∪ R, loss = -(1 - alpha) * mean_{i in M} CE_i + alpha * mean_{i in R} CE_i
  (alpha = ``loss_weighting``, default 0.05; the best toy run of the paper used 0.7), pushing M's loss up while
  holding R's loss down. A batch without M (or R) rows drops that term.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from htsr.devices import model_device
from htsr.memorization.mlp import MLP
from htsr.memorization.unlearning.common import UnlearnReport, frozen, seq_ce


class _TopMask(torch.autograd.Function):
    """Edge-popup's GetSubnet: 0 for the ``ratio`` smallest scores, 1 otherwise; identity gradient."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, ratio: float) -> torch.Tensor:  # type: ignore[override]
        out = torch.ones_like(scores)
        j = int(ratio * scores.numel())
        if j:
            idx = scores.flatten().argsort()[:j]
            out.view(-1)[idx] = 0
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


class _Masked(nn.Module):
    def __init__(self, shape: torch.Size, ratio: float, generator: torch.Generator, device: torch.device):
        super().__init__()
        s = torch.empty(shape)
        nn.init.kaiming_uniform_(s, a=math.sqrt(5), generator=generator)
        self.scores = nn.Parameter(s.to(device))
        self.ratio = ratio

    def mask(self) -> torch.Tensor:
        return _TopMask.apply(self.scores.abs(), self.ratio)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask()


def _modules(mlps: list[MLP]) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    for m in mlps:
        out.update(m.ups)
        out[m.down_name] = m.down
    return out


def subnet(model: nn.Module, mlps: list[MLP], forget: torch.Tensor, retain: torch.Tensor | None, ratio: float,
           report: UnlearnReport, *, balanced: bool, epochs: int = 10, lr: float = 0.1, momentum: float = 0.9,
           weight_decay: float = 5e-4, batch_size: int = 64, loss_weighting: float = 0.05, seed: int = 0) -> None:
    """Learn and bake a pruning mask of the MLP weights (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    mods = _modules(mlps)
    dev = model_device(model)
    masks: dict[str, _Masked] = {}
    with frozen(model):
        for n, mod in mods.items():
            masks[n] = _Masked(mod.weight.shape, ratio, g, dev)
            parametrize.register_parametrization(mod, "weight", masks[n])
        try:
            opt = torch.optim.SGD([m.scores for m in masks.values()], lr=lr, momentum=momentum,
                                  weight_decay=weight_decay)
            if balanced:
                ids = torch.cat([forget, retain])
                is_m = torch.cat([torch.ones(forget.shape[0], dtype=torch.bool),
                                  torch.zeros(retain.shape[0], dtype=torch.bool)])
            else:
                ids, is_m = forget, torch.ones(forget.shape[0], dtype=torch.bool)
            a = float(loss_weighting)
            for _ in range(epochs):
                order = torch.randperm(ids.shape[0], generator=g)
                for s in range(0, ids.shape[0], batch_size):
                    sel = order[s:s + batch_size]
                    ce = seq_ce(model, ids[sel])
                    m = is_m[sel].to(ce.device)
                    if balanced:
                        loss = ce.new_zeros(())
                        if m.any():
                            loss = loss - (1 - a) * ce[m].mean()
                        if (~m).any():
                            loss = loss + a * ce[~m].mean()
                    else:
                        loss = -ce.mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            finals = {}
            with torch.no_grad():
                for n, mod in mods.items():
                    finals[n] = masks[n].mask().detach()
                    parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
    for n in mods:
        pname = f"{n}.weight"
        report.weights[pname] = torch.nonzero(finals[n].view(-1) == 0).flatten().cpu().numpy()
