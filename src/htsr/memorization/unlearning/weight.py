"""Weight-based unlearning (TinyMem reference ``src/localize/weight/*``): zero individual weight entries.

* Greedy (after Maini et al. 2023): repeat ``ratio x #params`` times: draw a shuffled batch of 64 from M ∪ R
  (label +1 for M, -1 for R), J = mean(-label * CE), backpropagate, and zero the single entry with the largest
  w * dJ/dw (the first-order estimate of how much zeroing it lowers J, i.e. raises CE(M) and lowers CE(R)).
  Scope: every parameter (as the reference) or only the MLP tensors (``scope="mlp"``).
* Durable: accumulate the gradient of CE over all batches of M (no zeroing between batches); in each MLP tensor
  zero the top-``ratio`` fraction by |grad|.
* Durable-Aggregate: the top-``ratio`` selection is made globally over every parameter, then applied to the MLP
  tensors only.
* Second-Order Unlearning (reference ``obs.py``): per MLP tensor, a block-diagonal empirical-Fisher inverse (block
  50, damping 1e-7, F^-1 initialised to I/damping) from ``num_grads`` (512) rank-1 Sherman-Morrison updates with
  gradients of M's sequences; OBS saliency w^2 / (2 [F^-1]_ii); zero the top-``ratio`` fraction per tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from htsr.memorization.unlearning.common import UnlearnReport, batches, frozen, n_top, seq_ce


def _params(model: nn.Module, names: list[str]) -> dict[str, nn.Parameter]:
    allp = dict(model.named_parameters())
    return {n: allp[n] for n in names if n in allp}


@torch.no_grad()
def _zero(params: dict[str, nn.Parameter], chosen: dict[str, torch.Tensor], report: UnlearnReport) -> None:
    for n, idx in chosen.items():
        if idx.numel():
            params[n].view(-1)[idx.to(params[n].device)] = 0
            report.weights[n] = idx.cpu().numpy()


def greedy(model: nn.Module, forget: torch.Tensor, retain: torch.Tensor, ratio: float, names: list[str],
           report: UnlearnReport, *, batch_size: int = 64, seed: int = 0, max_iters: int | None = None) -> None:
    """Greedy unlearning (module docstring); ``names``: the parameters in scope."""
    params = _params(model, names)
    n_params = sum(p.numel() for p in params.values())
    iters = max(1, int(ratio * n_params))
    if max_iters is not None:
        iters = min(iters, max_iters)
    ids = torch.cat([forget, retain])
    labels = torch.cat([torch.ones(forget.shape[0]), -torch.ones(retain.shape[0])])
    g = torch.Generator().manual_seed(seed)
    chosen: dict[str, list[int]] = {n: [] for n in params}
    with frozen(model):
        for p in params.values():
            p.requires_grad_(True)
        it = 0
        while it < iters:
            order = torch.randperm(ids.shape[0], generator=g)
            for s in range(0, ids.shape[0], batch_size):
                if it >= iters:
                    break
                sel = order[s:s + batch_size]
                for p in params.values():
                    p.grad = None
                J = (-labels[sel].to(ids.device) * seq_ce(model, ids[sel]).cpu()).mean()
                J.backward()
                best_name, best_idx, best_val = None, -1, -float("inf")
                for n, p in params.items():
                    sc = (p.detach() * p.grad).view(-1) if p.grad is not None else None
                    if sc is None:
                        continue
                    v, i = sc.max(dim=0)
                    if float(v) > best_val:
                        best_name, best_idx, best_val = n, int(i), float(v)
                if best_name is not None:
                    with torch.no_grad():
                        params[best_name].view(-1)[best_idx] = 0
                    chosen[best_name].append(best_idx)
                it += 1
        for p in params.values():
            p.grad = None
    for n, lst in chosen.items():
        if lst:
            report.weights[n] = torch.tensor(sorted(set(lst))).numpy()


def _accumulated_grads(model: nn.Module, forget: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    allp = dict(model.named_parameters())
    with frozen(model):
        for p in allp.values():
            p.requires_grad_(True)
            p.grad = None
        for b in batches(forget, batch_size):
            seq_ce(model, b).mean().backward()  # accumulates: no zero_grad between batches (as the reference)
        grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in allp.items()}
        for p in allp.values():
            p.grad = None
    return grads


def durable(model: nn.Module, forget: torch.Tensor, ratio: float, names: list[str], report: UnlearnReport, *,
            aggregate: bool = False, batch_size: int = 64) -> None:
    """Durable / Durable-Aggregate (module docstring); ``names``: the MLP tensors that may be zeroed."""
    grads = _accumulated_grads(model, forget, batch_size)
    params = _params(model, names)
    chosen: dict[str, torch.Tensor] = {}
    if aggregate:
        flat = torch.cat([g.abs().view(-1) for g in grads.values()])
        k = n_top(ratio, flat.numel())
        thresh = torch.topk(flat, k).values.min()
        for n in params:
            chosen[n] = torch.nonzero(grads[n].abs().view(-1) >= thresh).flatten()
    else:
        for n in params:
            a = grads[n].abs().view(-1)
            chosen[n] = torch.topk(a, n_top(ratio, a.numel())).indices.sort().values
    _zero(params, chosen, report)


def second_order(model: nn.Module, forget: torch.Tensor, ratio: float, names: list[str], report: UnlearnReport, *,
                 block_size: int = 50, damp: float = 1e-7, num_grads: int = 512, batch_size: int = 1,
                 seed: int = 0) -> None:
    """Second-Order Unlearning: OBS saliency from a block-diagonal empirical Fisher inverse (module docstring)."""
    params = _params(model, names)
    finv: dict[str, torch.Tensor] = {}
    for n, p in params.items():
        d = p.numel()
        nb = -(-d // block_size)
        finv[n] = torch.eye(block_size, dtype=torch.float64).repeat(nb, 1, 1) / damp
    g = torch.Generator().manual_seed(seed)
    done = 0
    with frozen(model):
        for p in params.values():
            p.requires_grad_(True)
        while done < num_grads:
            for b in batches(forget, batch_size, g):
                if done >= num_grads:
                    break
                for p in params.values():
                    p.grad = None
                seq_ce(model, b).mean().backward()
                for n, p in params.items():
                    gv = p.grad.detach().view(-1).double().cpu()
                    pad = finv[n].shape[0] * block_size - gv.numel()
                    gb = torch.nn.functional.pad(gv, (0, pad)).view(-1, block_size, 1)     # (nb, B, 1)
                    fg = finv[n] @ gb                                                        # (nb, B, 1)
                    denom = num_grads + (gb.transpose(1, 2) @ fg)                            # (nb, 1, 1)
                    finv[n] -= (fg @ fg.transpose(1, 2)) / denom
                done += 1
        for p in params.values():
            p.grad = None
    chosen = {}
    for n, p in params.items():
        diag = torch.diagonal(finv[n], dim1=1, dim2=2).reshape(-1)[: p.numel()]
        sal = p.detach().double().cpu().view(-1) ** 2 / (2 * diag)
        chosen[n] = torch.topk(sal, n_top(ratio, sal.numel())).indices.sort().values
    _zero(params, chosen, report)
