"""The MoE-LoRA layer (MoLA / AlphaLoRA): a frozen linear-like base plus ``E`` LoRA experts and a router.

For tokens ``x`` (flattened to ``(N, in)``)::

    p      = softmax(router(x))                 # router: Linear(in -> E), no bias, Kaiming-uniform (a = sqrt 5)
    w, idx = topk(p, k);  w = w / sum(w)        # renormalised over the k chosen experts
    y      = base(x) + scaling * sum_{e in idx} w_e * B_e A_e dropout(x)      # scaling = lora_alpha / r

The experts are stacked, ``A`` of shape ``(E, r, in)`` and ``B`` of shape ``(E, out, r)``, and evaluated for all
tokens in two matrix products with the gate (zero for unchosen experts) applied between them: no Python loop
over tokens or experts. With one expert the router is skipped and the layer is plain LoRA (PEFT's formula).
The router logits of the last forward pass are kept for the optional Switch-style balance loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from htsr.nn import in_out_features, is_linear_like


class MoLoraLinear(nn.Module):
    """``base`` (``nn.Linear`` or HF ``Conv1D``, frozen by the caller) with ``n_experts`` LoRA experts of rank ``r``
    routed ``top_k`` per token."""

    def __init__(self, base: nn.Module, n_experts: int = 1, top_k: int = 1, r: int = 8, lora_alpha: float = 16.0,
                 lora_dropout: float = 0.05, init_lora_weights: bool = True) -> None:
        super().__init__()
        if not is_linear_like(base):
            raise TypeError(f"{type(base).__name__} is not a linear-like layer (expected nn.Linear or HF Conv1D)")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in 1..{n_experts}, got {top_k}")
        self.base = base
        self.in_features, self.out_features = in_out_features(base)
        self.n_experts, self.top_k, self.r = int(n_experts), int(top_k), int(r)
        self.scaling = float(lora_alpha) / self.r
        self.lora_alpha = float(lora_alpha)
        w = base.weight
        kw = {"device": w.device, "dtype": w.dtype if w.dtype.is_floating_point else torch.float32}
        self.router = nn.Linear(self.in_features, self.n_experts, bias=False, **kw) if self.n_experts > 1 else None
        self.lora_A = nn.Parameter(torch.empty(self.n_experts, self.r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.n_experts, self.out_features, self.r, **kw))
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.last_router_logits: torch.Tensor | None = None
        self.reset_parameters(init_lora_weights)

    def reset_parameters(self, init_lora_weights: bool = True) -> None:
        """Each ``A_e`` Kaiming-uniform (a = sqrt 5, as ``nn.Linear`` and PEFT's ``lora_A``); ``B = 0`` (or also
        Kaiming-uniform with ``init_lora_weights=False``); the router Kaiming-uniform."""
        with torch.no_grad():
            for e in range(self.n_experts):
                nn.init.kaiming_uniform_(self.lora_A[e], a=math.sqrt(5))
                if init_lora_weights:
                    self.lora_B[e].zero_()
                else:
                    nn.init.kaiming_uniform_(self.lora_B[e], a=math.sqrt(5))
            if self.router is not None:
                nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, experts={self.n_experts}, top_k={self.top_k}, "
                f"r={self.r}, scaling={self.scaling:g}")

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, E)`` routing weights of flattened tokens: the renormalised top-k softmax, zero elsewhere."""
        logits = self.router(x)
        self.last_router_logits = logits
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        w, idx = torch.topk(probs, self.top_k, dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter_(1, idx, w).to(x.dtype)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapters' output for ``x`` of shape ``(..., in)``, without the base layer."""
        shape = x.shape[:-1]
        xs = x.reshape(-1, self.in_features).to(self.lora_A.dtype)
        xd = self.dropout(xs)
        if self.n_experts == 1:
            out = (xd @ self.lora_A[0].t()) @ self.lora_B[0].t()
        else:
            g = self.gates(xs)  # (N, E)
            h = xd @ self.lora_A.reshape(-1, self.in_features).t()  # (N, E*r): every expert in one product
            h = (h.view(-1, self.n_experts, self.r) * g.unsqueeze(-1)).reshape(-1, self.n_experts * self.r)
            out = h @ self.lora_B.permute(0, 2, 1).reshape(self.n_experts * self.r, self.out_features)
        return (out * self.scaling).reshape(*shape, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.delta(x).to(y.dtype)

    def balance_loss(self) -> torch.Tensor | None:
        """Switch-style load balance of the last forward pass: ``E * sum_e f_e P_e`` with ``f_e`` the fraction of
        the top-k assignments that went to expert ``e`` and ``P_e`` its mean router probability (1 when perfectly
        balanced). None for a one-expert layer or before a forward pass."""
        if self.last_router_logits is None:
            return None
        p = torch.softmax(self.last_router_logits.float(), dim=-1)
        idx = torch.topk(p, self.top_k, dim=-1).indices
        f = torch.zeros_like(p).scatter_(1, idx, 1.0).mean(0) / self.top_k
        return self.n_experts * (f * p.mean(0)).sum()
