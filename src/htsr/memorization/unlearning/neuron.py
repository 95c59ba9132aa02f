"""Neuron-based unlearning (adapted from Chang et al. 2024 as in the TinyMem reference,
``src/localize/neuron/*``): score every MLP neuron of every layer on the forget set M, then silence the
top-``ratio`` fraction per layer (:func:`~htsr.memorization.unlearning.common.ablate_neurons`).

* Zero-Out: score = CE(M) with neuron j's activation zeroed - CE(M). Reference bug fixed: the reference
  multiplied the activations by a one-hot vector, i.e. kept *only* neuron j; here neuron j alone is zeroed.
* Activations: |mean activation over M and positions [prompt_len-1, T-1)| x L2 norm of the neuron's output
  weights in the down-projection.
* Slimming: learn per-layer coefficients c in [0, 1] (clipped after each step, init 1) multiplying the
  activations; minimise CE(M) + lambda_l1 * sum|c| / N with Adam (lr 0.1); stop early when sum|c|/N < 0.1;
  score = c.
* Hard Concrete: L0 gates on the down-projection inputs (l=-0.1, r=1.1, beta=2/3, init keep-probability 0.5);
  minimise CE(M) + lambda * mean sigmoid(s - beta log(-l/r)) with Adam (lr 0.1); score = sigmoid(s).
* Integrated Gradients: for each sequence in M, each position i in [prompt_len-1, T-1) and each layer, scale the
  layer's activations at position i from 0 to their value in ``ig_steps`` steps; IG = activation x mean gradient of
  p(next token at i); averaged over positions and sequences.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from htsr.devices import model_device
from htsr.memorization.mlp import MLP
from htsr.memorization.unlearning.common import (
    batches,
    edit_activations,
    frozen,
    record_activations,
    seq_ce,
)
from htsr.nn import weight_2d


@torch.no_grad()
def _mean_ce(model: nn.Module, forget: torch.Tensor, batch_size: int = 256) -> float:
    tot = 0.0
    for b in batches(forget, batch_size):
        tot += float(seq_ce(model, b).sum())
    return tot / forget.shape[0]


def zero_out_scores(model: nn.Module, mlps: list[MLP], forget: torch.Tensor,
                    neurons_per_pass: int | None = None) -> list[torch.Tensor]:
    """ΔCE(M) when each neuron alone is zeroed. Several neurons are scored per forward pass by stacking copies
    of M (copy c has neuron j_c zeroed); the result equals one pass per neuron."""
    n = forget.shape[0]
    per = neurons_per_pass or max(1, min(64, 4096 // max(n, 1)))
    dev = model_device(model)
    with frozen(model), torch.no_grad():
        base = _mean_ce(model, forget)
        out = []
        for i, mlp in enumerate(mlps):
            s = torch.zeros(mlp.n_neurons)
            for j0 in range(0, mlp.n_neurons, per):
                js = torch.arange(j0, min(j0 + per, mlp.n_neurons))
                c = js.numel()
                rows = torch.arange(c * n, device=dev)
                cols = js.to(dev).repeat_interleave(n)

                def zero(a, rows=rows, cols=cols):
                    a = a.clone()
                    a[rows, :, cols] = 0
                    return a
                with edit_activations(mlps, {i: zero}):
                    ce = seq_ce(model, forget.repeat(c, 1)).view(c, n).mean(dim=1)
                s[js] = ce.cpu() - base
            out.append(s)
    return out


def activation_scores(model: nn.Module, mlps: list[MLP], forget: torch.Tensor, prompt_len: int,
                      batch_size: int = 256) -> list[torch.Tensor]:
    """|mean activation over M, positions [prompt_len-1, T-1)| x ||output weights||_2 per neuron."""
    sums = [torch.zeros(m.n_neurons, dtype=torch.float64) for m in mlps]
    count = 0
    dev = model_device(model)
    with frozen(model), torch.no_grad():
        for b in batches(forget, batch_size):
            with record_activations(mlps) as store:
                model(input_ids=b.to(dev))
            lo, hi = max(prompt_len - 1, 0), b.shape[1] - 1
            for i in range(len(mlps)):
                a = store[i][0][:, lo:hi]
                sums[i] += a.double().sum(dim=(0, 1)).cpu()
            count += b.shape[0] * max(hi - lo, 1)
    return [(s / count).abs().float() * weight_2d(m.down).detach().float().norm(dim=0).cpu()
            for s, m in zip(sums, mlps, strict=True)]


def slimming_scores(model: nn.Module, mlps: list[MLP], forget: torch.Tensor, *, epochs: int = 10, lr: float = 0.1,
                    lambda_l1: float = 1000.0, stop_l1: float = 0.1, batch_size: int = 64,
                    seed: int = 0) -> list[torch.Tensor]:
    """Learned activation coefficients c in [0, 1] (network slimming on M)."""
    dev = model_device(model)
    coefs = [torch.ones(m.n_neurons, device=dev, requires_grad=True) for m in mlps]
    n_total = sum(c.numel() for c in coefs)
    opt = torch.optim.Adam(coefs, lr=lr)
    g = torch.Generator().manual_seed(seed)
    with frozen(model), edit_activations(mlps, {i: (lambda a, c=c: a * c) for i, c in enumerate(coefs)}):
        done = False
        for _ in range(epochs):
            for b in batches(forget, batch_size, g):
                opt.zero_grad()
                l1 = sum(c.abs().sum() for c in coefs) / n_total
                loss = seq_ce(model, b).mean() + lambda_l1 * l1
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for c in coefs:
                        c.clamp_(0.0, 1.0)
                if float(sum(c.detach().abs().sum() for c in coefs) / n_total) < stop_l1:
                    done = True
                    break
            if done:
                break
    return [c.detach().cpu() for c in coefs]


HC_L, HC_R, HC_BETA = -0.1, 1.1, 2.0 / 3.0


def hard_concrete_scores(model: nn.Module, mlps: list[MLP], forget: torch.Tensor, *, epochs: int = 10,
                         lr: float = 0.1, lambda_l0: float = 1000.0, stop_l0: float = 0.1, init_p: float = 0.5,
                         batch_size: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Hard-concrete L0 gates (Louizos et al.) on the neurons, trained on M; score = sigmoid(log_alpha)."""
    dev = model_device(model)
    init = math.log(init_p / (1 - init_p))
    logits = [torch.full((m.n_neurons,), init, device=dev, requires_grad=True) for m in mlps]
    opt = torch.optim.Adam(logits, lr=lr)
    g = torch.Generator().manual_seed(seed)
    shift = HC_BETA * math.log(-HC_L / HC_R)

    def gate(s: torch.Tensor) -> torch.Tensor:
        u = torch.rand(s.shape, generator=g).clamp(1e-6, 1 - 1e-6).to(s.device)
        soft = torch.sigmoid((torch.log(u) - torch.log(1 - u) + s) / HC_BETA)
        return (soft * (HC_R - HC_L) + HC_L).clamp(0.0, 1.0)

    gates: list[torch.Tensor | None] = [None] * len(mlps)
    with frozen(model), edit_activations(mlps, {i: (lambda a, i=i: a * gates[i]) for i in range(len(mlps))}):
        done = False
        for _ in range(epochs):
            for b in batches(forget, batch_size, g):
                opt.zero_grad()
                for i, s in enumerate(logits):
                    gates[i] = gate(s)
                l0 = torch.cat([torch.sigmoid(s - shift) for s in logits]).mean()
                loss = seq_ce(model, b).mean() + lambda_l0 * l0
                loss.backward()
                opt.step()
                if float(l0.detach()) < stop_l0:
                    done = True
                    break
            if done:
                break
    return [torch.sigmoid(s.detach()).cpu() for s in logits]


def integrated_gradients_scores(model: nn.Module, mlps: list[MLP], forget: torch.Tensor, prompt_len: int, *,
                                ig_steps: int = 20, chunk: int = 1024) -> list[torch.Tensor]:
    """Integrated-gradients attribution of each neuron to the memorized next tokens (see module docstring)."""
    dev = model_device(model)
    T = forget.shape[1]
    positions = torch.arange(max(prompt_len - 1, 0), T - 1)
    alphas = torch.arange(1, ig_steps + 1, dtype=torch.float32) / ig_steps
    pos_rep = positions.repeat_interleave(ig_steps)          # (P*m,)
    alpha_rep = alphas.repeat(positions.numel())             # (P*m,)
    scores = [torch.zeros(m.n_neurons, dtype=torch.float64) for m in mlps]
    n_terms = 0
    with frozen(model):
        for x in forget:
            x = x.to(dev)
            with torch.no_grad(), record_activations(mlps) as store:
                model(input_ids=x.unsqueeze(0))
            targets = x[pos_rep + 1]
            for li in range(len(mlps)):
                orig = store[li][0][0]                         # (T, d_ff)
                grad_sum = torch.zeros(positions.numel(), orig.shape[1], dtype=torch.float64, device=dev)
                for s in range(0, pos_rep.numel(), chunk):
                    pr, ar = pos_rep[s:s + chunk].to(dev), alpha_rep[s:s + chunk].to(dev)
                    scaled = (ar.unsqueeze(1) * orig[pr]).requires_grad_(True)
                    rows = torch.arange(pr.numel(), device=dev)

                    def put(a, pr=pr, rows=rows, scaled=scaled):
                        a = a.clone()
                        a[rows, pr] = scaled
                        return a
                    with edit_activations(mlps, {li: put}):
                        logits = model(input_ids=x.unsqueeze(0).expand(pr.numel(), -1)).logits
                    probs = torch.softmax(logits[rows, pr].float(), dim=-1)
                    p = probs[rows, targets[s:s + chunk]].sum()
                    (g,) = torch.autograd.grad(p, scaled)
                    grad_sum.index_add_(0, (pr - positions[0].to(dev)), g.double())
                ig = orig[positions.to(dev)].double() * grad_sum / ig_steps   # (P, d_ff)
                scores[li] += ig.sum(dim=0).cpu()
            n_terms += positions.numel()
    return [(s / max(n_terms, 1)).float() for s in scores]
