"""TinyMem metrics: % memorized (noise), attack success rate (backdoor), accuracy and perplexity per task.

% memorized (reference ``refined_check_percent_memorized``): keep the noised sequences whose tokens
``[prompt_len, prompt_len + k)`` differ from their clean version; prompt with the *clean* sequence's first
``prompt_len`` tokens and greedy-decode ``k`` tokens; a sequence is memorized iff the generated tokens equal the
noised ones exactly. % correct: the fraction whose generation equals the clean continuation instead.

Backdoor ASR: prompt with the clean triggered sequence up to and including the trigger; memorized iff the next
``min(k, remaining)`` generated tokens are all the backdoor token (2).

Accuracy: teacher-forced next-token argmax accuracy on each clean test set. By default only positions whose target
is not padding count (the reference also counted the trivially predictable padding, inflating accuracy); pass
``include_pad=True`` for the reference's figure. Perplexity: mean over batches of exp(mean cross-entropy) (as the
reference), over non-pad targets by default.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.devices import model_device
from htsr.memorization.config import check_prompt
from htsr.memorization.data import BACKDOOR_TOKEN, TinyMemData, find_trigger
from htsr.memorization.errors import MemorizationError
from htsr.nn import eval_mode


def _cache_of(out: Any) -> Any:
    c = out.get("cache") if hasattr(out, "get") else None
    return c if c is not None else getattr(out, "past_key_values", None)


@torch.no_grad()
def greedy_generate(model: nn.Module, prompts: torch.Tensor, n_new: int, batch_size: int = 512) -> torch.Tensor:
    """Greedy continuation of equal-length prompts: (n, prompt_len + n_new) ids (KV cache, eval mode)."""
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise MemorizationError(f"prompts must be (n, prompt_len >= 1), got {tuple(prompts.shape)}")
    n_pos = getattr(getattr(model, "config", None), "n_positions", None) or getattr(
        getattr(model, "config", None), "max_position_embeddings", None)
    if n_pos is not None and prompts.shape[1] + n_new > n_pos:
        raise MemorizationError(f"prompt length {prompts.shape[1]} + {n_new} new tokens exceeds the model's "
                                f"{n_pos} positions")
    dev = model_device(model)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    outs = []
    with eval_mode(model):
        for s in range(0, prompts.shape[0], batch_size):
            ids = prompts[s:s + batch_size].to(dev)
            out = model(input_ids=ids, use_cache=True)
            past = _cache_of(out)
            toks = [ids]
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            for i in range(n_new):
                toks.append(nxt)
                if i + 1 == n_new:
                    break
                out = model(input_ids=nxt, **{cache_kw: past}, use_cache=True)
                past = _cache_of(out)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            outs.append(torch.cat(toks, dim=1).cpu())
    return torch.cat(outs) if outs else prompts.new_zeros((0, prompts.shape[1] + n_new))


@dataclass
class MemorizationResult:
    """Per-sequence outcome of a memorization check (indices refer to the artifact set checked)."""

    checked: np.ndarray          # indices of the sequences that count (noise inside the window / triggered)
    memorized: np.ndarray        # bool per checked sequence
    correct: np.ndarray          # bool per checked sequence (clean continuation; noise only)

    @property
    def perc_memorized(self) -> float:
        return 100.0 * float(self.memorized.mean()) if self.memorized.size else float("nan")

    @property
    def perc_correct(self) -> float:
        return 100.0 * float(self.correct.mean()) if self.correct.size else float("nan")

    @property
    def memorized_indices(self) -> np.ndarray:
        return self.checked[self.memorized]


def noise_memorization(model: nn.Module, noised: torch.Tensor, clean: torch.Tensor, prompt_len: int,
                       k: int) -> MemorizationResult:
    """The reference's % memorized on noised sequences (see the module docstring)."""
    if noised.shape != clean.shape:
        raise MemorizationError(f"noised {tuple(noised.shape)} and clean {tuple(clean.shape)} sets differ in shape")
    check_prompt(prompt_len, k, noised.shape[1])
    win = slice(prompt_len, prompt_len + k)
    keep = ~(noised[:, win] == clean[:, win]).all(dim=1)
    idx = torch.nonzero(keep).flatten()
    if idx.numel() == 0:
        return MemorizationResult(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool))
    gen = greedy_generate(model, clean[idx, :prompt_len], k)[:, prompt_len:]
    mem = (gen == noised[idx, win]).all(dim=1).numpy()
    cor = (gen == clean[idx, win]).all(dim=1).numpy()
    return MemorizationResult(idx.numpy(), mem, cor)


def backdoor_success(model: nn.Module, clean: torch.Tensor, trigger: list[int], k: int,
                     token: int = BACKDOOR_TOKEN) -> MemorizationResult:
    """Attack success per triggered sequence: prompts end with the trigger; success iff the next
    ``min(k, remaining)`` greedy tokens are all ``token``. Prompts are grouped by length (no padding)."""
    if not trigger:
        raise MemorizationError("the backdoor trigger is empty")
    ends = find_trigger(clean, trigger)
    idx = torch.nonzero(ends >= 0).flatten()
    T = clean.shape[1]
    idx = idx[ends[idx] < T]
    success = np.zeros(idx.numel(), dtype=bool)
    e = ends[idx]
    for L in torch.unique(e).tolist():
        sel = torch.nonzero(e == L).flatten()
        n_new = min(k, T - L)
        gen = greedy_generate(model, clean[idx[sel], :L], n_new)[:, L:]
        success[sel.numpy()] = (gen == token).all(dim=1).numpy()
    return MemorizationResult(idx.numpy(), success, np.zeros(idx.numel(), dtype=bool))


@torch.no_grad()
def accuracy_perplexity(model: nn.Module, ids: torch.Tensor, pad_id: int | None = None, include_pad: bool = False,
                        batch_size: int = 256) -> tuple[float, float]:
    """Teacher-forced next-token accuracy (%) and perplexity (mean over batches of exp(mean CE))."""
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise MemorizationError(f"evaluation ids must be a non-empty (n, seq_len) tensor, got {tuple(ids.shape)}")
    dev = model_device(model)
    correct = total = 0
    ppls = []
    with eval_mode(model):
        for s in range(0, ids.shape[0], batch_size):
            x = ids[s:s + batch_size].to(dev)
            logits = model(input_ids=x).logits[:, :-1].float()
            y = x[:, 1:]
            mask = torch.ones_like(y, dtype=torch.bool) if include_pad or pad_id is None else y != pad_id
            ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            ppls.append(float(torch.exp(ce[mask.reshape(-1)].mean())))
            correct += int(((logits.argmax(-1) == y) & mask).sum())
            total += int(mask.sum())
    return 100.0 * correct / max(total, 1), float(np.mean(ppls))


@dataclass
class Measurement:
    """What :func:`measure` reports: % memorized (noise: exact match; backdoor: ASR), % correct, per-task
    accuracy and perplexity, their means, and per-duplication-group % memorized."""

    perc_memorized: float
    perc_correct: float
    accuracy: dict[str, float]
    perplexity: dict[str, float]
    n_checked: int
    by_dup: dict[str, float] = field(default_factory=dict)
    train_memorized: Any = None  # MemorizationResult on the artifact training sequences (the forget set source)
    asr: float = float("nan")    # backdoor: attack success rate on the held-out triggered sequences
    n_asr: int = 0

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(list(self.accuracy.values())))

    @property
    def mean_perplexity(self) -> float:
        return float(np.mean(list(self.perplexity.values())))

    def to_dict(self) -> dict:
        return {"perc_memorized": self.perc_memorized, "perc_correct": self.perc_correct,
                "mean_accuracy": self.mean_accuracy, "mean_perplexity": self.mean_perplexity,
                "accuracy": self.accuracy, "perplexity": self.perplexity, "n_checked": self.n_checked,
                "by_dup": self.by_dup, "asr": self.asr, "n_asr": self.n_asr}


def measure(model: nn.Module, data: TinyMemData, include_pad: bool = False) -> Measurement:
    """All metrics of ``model`` on a test-bed. Noise: % memorized and % correct on the noised training sequences.
    Backdoor: % memorized = attack success on the backdoored *training* sequences (the memorized artifact, the
    forget-set source) and ``asr`` = attack success rate on the held-out triggered test sequences."""
    pad = data.tokenizer.pad_id
    acc, ppl = {}, {}
    for name, ids in data.tests.items():
        acc[name], ppl[name] = accuracy_perplexity(model, ids, pad, include_pad)
    by_dup: dict[str, float] = {}
    if data.artifact == "noise":
        r = noise_memorization(model, data.noise, data.noise_clean, data.prompt_len, data.k)
        if data.noise_dup is not None and len(set(data.noise_dup.tolist())) > 1:
            dup_of = data.noise_dup[r.checked]
            for rep in sorted(set(dup_of.tolist())):
                by_dup[f"x{rep}"] = 100.0 * float(r.memorized[dup_of == rep].mean())
        return Measurement(r.perc_memorized, r.perc_correct, acc, ppl, int(r.checked.size), by_dup, r)
    test = backdoor_success(model, data.backdoor_test_clean, data.trigger_ids, data.k)
    train = backdoor_success(model, data.backdoor_clean, data.trigger_ids, data.k)
    return Measurement(train.perc_memorized, float("nan"), acc, ppl, int(train.checked.size), {}, train,
                       test.perc_memorized, int(test.checked.size))


def forget_set(data: TinyMemData, m: Measurement) -> torch.Tensor:
    """The sequences to unlearn: the artifact training sequences the model currently memorizes (noised or
    backdoored, as trained on). Raises a clear error when nothing is memorized."""
    r = m.train_memorized
    idx = r.memorized_indices if r is not None else np.zeros(0, np.int64)
    if idx.size == 0:
        raise MemorizationError("the forget set is empty: the model memorizes none of the artifact sequences, so "
                                "there is nothing to unlearn")
    return data.artifact_train[torch.from_numpy(idx)]
