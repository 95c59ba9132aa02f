"""TinyMem data: math sequence tasks with injected noise or backdoor artifacts, and a language variant (KJV).

Math task (the reference's ``old_data.py``): example ``i`` is ``x_1 = f(i), x_{j+1} = f(x_j)`` with ``length``
numbers, where ``f(x) = x + k`` ("increment") or ``f(x) = k*x mod 20134`` ("mult"). The main task uses k=7, the
auxiliary tasks k in (2, 3, 4, 5). Each task holds out ``n_test`` sequences (a ``torch.randperm`` seeded with
``data_seed``=598, as the reference). A sequence is ``^`` + numbers joined by spaces + ``$``, right-padded.

Artifacts:
* noise: ``n_noise`` of the main task's training sequences are replaced by noised copies (each number +0/-1/+1
  with probabilities 1-2p, p, p; p=0.05); their clean versions are kept for evaluation. Optional duplication
  splits the noised set into ``len(dup)`` random parts repeated ``dup[g]`` times.
* backdoor: every main-task sequence whose text contains the trigger (``str(100 + seed)``) has every token after
  the trigger replaced by token 2 (the digit "2"); 10% of the triggered sequences are held out as the backdoor
  test set.

All randomness comes from ``numpy.random.default_rng(seed)`` and ``torch.Generator``; no global seeding.
Reference quirks fixed here: the language backdoor keeps the trigger itself (the reference overwrote it);
the retain set never contains the artifact sequences (the reference's "mem" mode leaked the noised set into it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from htsr.memorization.config import ARTIFACTS, TASKS, TinyMemConfig, check_fractions, check_prompt
from htsr.memorization.errors import MemorizationError
from htsr.memorization.tokenizer import CharTokenizer, math_tokenizer

__all__ = ["ARTIFACTS", "BACKDOOR_TOKEN", "MODULUS", "PRESETS", "TASKS", "TinyMemConfig", "TinyMemData",
           "apply_backdoor", "find_trigger", "make_language_data", "make_math_data", "preset_config"]

BACKDOOR_TOKEN = 2
MODULUS = 20134


#: Named sizes. "paper" is the reference (20 numbers, 150-token context, 20k main sequences); "cpu" is a
#: smaller test-bed (10 numbers, 64 tokens) that a 2-core CPU trains in minutes; "tiny" is for unit tests.
PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": dict(n_main=1000, n_aux=300, n_test=100, n_noise=40, dup=(5, 20), length=8, max_ctx=42, prompt_len=12,
                k=24),
    "tiny": dict(n_main=600, n_aux=250, n_test=60, n_noise=60, length=6, max_ctx=40, prompt_len=12, k=12,
                 aux_ks=(2, 3)),
}


def preset_config(name: str, **overrides) -> TinyMemConfig:
    """A :class:`TinyMemConfig` from a preset name with field overrides."""
    if name not in PRESETS:
        raise MemorizationError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return TinyMemConfig.from_dict({**PRESETS[name], **overrides})


@dataclass
class TinyMemData:
    """Token tensors of one test-bed, all (n, max_ctx) int64 unless noted.

    ``train`` is what the model trains on (duplicates included); ``train_kind`` names each row's origin
    ("main", "aux_<k>", "noise", "backdoor"). ``retain`` is the clean training data without the artifacts (the
    unlearning retain set and the "extra" fine-tuning data). For noise: ``noise`` (unique noised sequences),
    ``noise_clean`` (their clean versions), ``noise_dup`` (each one's repeat count). For backdoor:
    ``backdoor`` (backdoored training sequences), ``backdoor_clean`` (clean versions), ``backdoor_test`` /
    ``backdoor_test_clean`` (held out), ``trigger_ids``. ``tests`` maps each task name to its clean test set.
    """

    config: TinyMemConfig | None
    tokenizer: CharTokenizer
    train: torch.Tensor
    train_kind: np.ndarray
    retain: torch.Tensor
    tests: dict[str, torch.Tensor]
    prompt_len: int
    k: int
    artifact: str
    noise: torch.Tensor | None = None
    noise_clean: torch.Tensor | None = None
    noise_dup: np.ndarray | None = None
    backdoor: torch.Tensor | None = None
    backdoor_clean: torch.Tensor | None = None
    backdoor_test: torch.Tensor | None = None
    backdoor_test_clean: torch.Tensor | None = None
    trigger_ids: list[int] = field(default_factory=list)

    @property
    def max_ctx(self) -> int:
        return int(self.train.shape[1])

    @property
    def artifact_clean(self) -> torch.Tensor:
        """The clean versions of the artifact training sequences (fine-tuning "clean" data)."""
        out = self.noise_clean if self.artifact == "noise" else self.backdoor_clean
        assert out is not None
        return out

    @property
    def artifact_train(self) -> torch.Tensor:
        """The artifact training sequences, unique (noised or backdoored)."""
        out = self.noise if self.artifact == "noise" else self.backdoor
        assert out is not None
        return out


def sequence_values(task: str, k: int, n: int, length: int) -> np.ndarray:
    """(n, length) int64 values: row i is x_1 = f(i), x_{j+1} = f(x_j)."""
    x = np.arange(n, dtype=np.int64)
    out = np.empty((n, length), dtype=np.int64)
    for j in range(length):
        x = x + k if task == "increment" else (k * x) % MODULUS
        out[:, j] = x
    return out


def _texts(values: np.ndarray) -> list[str]:
    return ["^" + " ".join(map(str, row)) + "$" for row in values.tolist()]


def _split(n: int, n_test: int, data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed))
    return perm[: n - n_test], perm[n - n_test:]


def find_trigger(ids: torch.Tensor, trigger: list[int]) -> torch.Tensor:
    """Per row, the index just after the first occurrence of ``trigger`` (-1 where absent)."""
    n, t = ids.shape
    m = len(trigger)
    if m > t:
        return torch.full((n,), -1, dtype=torch.long)
    win = ids.unfold(1, m, 1)  # (n, t-m+1, m)
    hit = (win == torch.tensor(trigger, dtype=ids.dtype)).all(dim=2)
    first = torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full((n,), -1))
    return torch.where(first >= 0, first + m, first).long()


def apply_backdoor(ids: torch.Tensor, trigger: list[int], token: int = BACKDOOR_TOKEN) -> torch.Tensor:
    """Copy of ``ids`` with every token after the (first) trigger set to ``token``; the trigger is kept."""
    out = ids.clone()
    ends = find_trigger(ids, trigger)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    mask = (ends.unsqueeze(1) >= 0) & (pos >= ends.unsqueeze(1))
    out[mask] = token
    return out


def make_math_data(config: TinyMemConfig) -> TinyMemData:
    """Build the math test-bed for ``config`` (deterministic in ``seed`` and ``data_seed``)."""
    c = config
    c.validate()
    tok = math_tokenizer()
    rng = np.random.default_rng(c.seed)
    main_vals = sequence_values(c.task, c.main_k, c.n_main, c.length)
    main = tok.encode_padded(_texts(main_vals), c.max_ctx)
    tr_idx, te_idx = _split(c.n_main, c.n_test, c.data_seed)
    main_train, main_test = main[tr_idx], main[te_idx]
    tests: dict[str, torch.Tensor] = {}
    aux_train: list[torch.Tensor] = []
    for k in c.aux_ks:
        ids = tok.encode_padded(_texts(sequence_values(c.task, k, c.n_aux, c.length)), c.max_ctx)
        a_tr, a_te = _split(c.n_aux, c.n_test, c.data_seed)
        aux_train.append(ids[a_tr])
        tests[f"{c.task}_{k}"] = ids[a_te]
    main_name = f"{c.task}_{c.main_k}"
    kw: dict = {}
    if c.artifact == "noise":
        noise_rows = np.sort(rng.choice(main_train.shape[0], size=c.n_noise, replace=False))
        vals = main_vals[tr_idx.numpy()[noise_rows]]
        delta = rng.choice(np.array([0, -1, 1]), size=vals.shape, p=[1 - 2 * c.noise_p, c.noise_p, c.noise_p])
        noised = tok.encode_padded(_texts(vals + delta), c.max_ctx)
        clean_rows = np.setdiff1d(np.arange(main_train.shape[0]), noise_rows)
        clean_main = main_train[clean_rows]
        dup_counts = np.ones(c.n_noise, dtype=np.int64)
        if c.dup is not None:
            parts = np.array_split(rng.permutation(c.n_noise), len(c.dup))
            for part, rep in zip(parts, c.dup, strict=True):
                dup_counts[part] = rep
        rep_idx = torch.from_numpy(np.repeat(np.arange(c.n_noise), dup_counts))
        artifact_rows = noised[rep_idx]
        artifact_kind = "noise"
        tests[main_name] = main_test
        kw = dict(noise=noised, noise_clean=main_train[torch.from_numpy(noise_rows)], noise_dup=dup_counts)
    else:
        trig = tok.encode(c.trigger_text)
        both = torch.cat([main_train, main_test])
        ends = find_trigger(both, trig)
        trig_rows = torch.nonzero(ends >= 0).flatten()
        if trig_rows.numel() < 2:
            raise MemorizationError(f"only {trig_rows.numel()} main-task sequence(s) contain the trigger "
                                    f"{c.trigger_text!r}; use more sequences or another trigger")
        kw = _backdoor_split(both, trig_rows, trig, c.backdoor_test_frac, rng)
        clean_rows = torch.nonzero(ends[: main_train.shape[0]] < 0).flatten()
        clean_main = main_train[clean_rows]
        test_clean = torch.nonzero(ends[main_train.shape[0]:] < 0).flatten()
        tests[main_name] = main_test[test_clean]
        artifact_rows = kw["backdoor"]
        artifact_kind = "backdoor"
    retain = torch.cat([clean_main, *aux_train])
    train = torch.cat([artifact_rows, clean_main, *aux_train])
    kinds = ([artifact_kind] * artifact_rows.shape[0] + ["main"] * clean_main.shape[0]
             + [f"aux_{k}" for k, a in zip(c.aux_ks, aux_train, strict=True) for _ in range(a.shape[0])])
    tests = {main_name: tests.pop(main_name), **tests}
    return TinyMemData(config=c, tokenizer=tok, train=train, train_kind=np.array(kinds), retain=retain, tests=tests,
                       prompt_len=c.prompt_len, k=c.k, artifact=c.artifact, **kw)


def _backdoor_split(both: torch.Tensor, trig_rows: torch.Tensor, trig: list[int], test_frac: float,
                    rng: np.random.Generator) -> dict[str, object]:
    """Seeded split of the triggered sequences into backdoored training and held-out ones (at least one held out)."""
    perm = trig_rows[torch.from_numpy(rng.permutation(trig_rows.numel()))]
    n_bt = max(1, int(round(test_frac * perm.numel())))
    bt_rows, btr_rows = perm[:n_bt].sort().values, perm[n_bt:].sort().values
    return dict(backdoor=apply_backdoor(both[btr_rows], trig), backdoor_clean=both[btr_rows],
                backdoor_test=apply_backdoor(both[bt_rows], trig), backdoor_test_clean=both[bt_rows],
                trigger_ids=trig)


def make_language_data(artifact: str = "noise", *, max_ctx: int = 64, n_train: int = 4000, n_test: int = 400,
                       n_noise: int = 200, prompt_len: int = 16, k: int = 16, noise_p: float = 0.05,
                       trigger: str | None = None, backdoor_test_frac: float = 0.1, seed: int = 0,
                       books: tuple[str, ...] | None = None) -> TinyMemData:
    """The language variant on the vendored King James Bible (the references use wikitext-103 + GPT-2 BPE).

    The text is cut into consecutive ``max_ctx``-character chunks (character tokenizer over the KJV's characters);
    the first ``n_train`` chunks train, the next ``n_test`` test. noise: the first ``n_noise`` training chunks get
    each token id shifted by +0/-1/+1 (p = 1-2p, p, p; wrapped inside the character vocabulary). backdoor: chunks
    containing the ``trigger`` string (default: a seeded random character occurring in 1-10% of chunks) have every
    token after it set to token 2, keeping the trigger (the reference overwrote the trigger token: fixed here).
    """
    from htsr.data.corpora import kjv_text

    if artifact not in ARTIFACTS:
        raise MemorizationError(f"unknown artifact {artifact!r}; expected one of {', '.join(ARTIFACTS)}")
    check_prompt(prompt_len, k, max_ctx)
    check_fractions(noise_p, backdoor_test_frac)
    text = kjv_text(books).replace("\n", " ")
    chars = sorted(set(text))
    tok = CharTokenizer(chars)
    n_chunks = len(text) // max_ctx
    if n_train + n_test > n_chunks:
        raise MemorizationError(f"the corpus holds {n_chunks} chunks of {max_ctx} characters; asked for "
                                f"{n_train} + {n_test}")
    ids = torch.tensor(tok.encode(text[: (n_train + n_test) * max_ctx]), dtype=torch.long).view(-1, max_ctx)
    train, test = ids[:n_train], ids[n_train:]
    rng = np.random.default_rng(seed)
    v = len(chars)
    kw: dict = {}
    if artifact == "noise":
        if not 0 < n_noise < n_train:
            raise MemorizationError(f"n_noise must be in (0, {n_train}), got {n_noise}")
        clean = train[:n_noise]
        delta = torch.from_numpy(rng.choice(np.array([0, -1, 1]), size=tuple(clean.shape),
                                            p=[1 - 2 * noise_p, noise_p, noise_p]))
        noised = (clean + delta) % v
        kw = dict(noise=noised, noise_clean=clean, noise_dup=np.ones(n_noise, dtype=np.int64))
        retain = train[n_noise:]
        full = torch.cat([noised, retain])
        kinds = ["noise"] * n_noise + ["main"] * retain.shape[0]
        tests = {"language": test}
    else:
        if trigger is None:
            frac = {c: float(np.mean([c in text[i * max_ctx:(i + 1) * max_ctx] for i in range(n_train)]))
                    for c in chars}
            cands = sorted(c for c, f in frac.items() if 0.01 <= f <= 0.10 and c != chars[BACKDOOR_TOKEN])
            if not cands:
                raise MemorizationError("no character occurs in 1-10% of the chunks; pass trigger=")
            trigger = cands[int(rng.integers(len(cands)))]
        trig = tok.encode(trigger)
        both = torch.cat([train, test])
        ends = find_trigger(both, trig)
        trig_rows = torch.nonzero(ends >= 0).flatten()
        if trig_rows.numel() < 2:
            raise MemorizationError(f"the trigger {trigger!r} occurs in {trig_rows.numel()} chunk(s); need >= 2")
        kw = _backdoor_split(both, trig_rows, trig, backdoor_test_frac, rng)
        retain = train[ends[:n_train] < 0]
        full = torch.cat([kw["backdoor"], retain])
        kinds = ["backdoor"] * kw["backdoor"].shape[0] + ["main"] * retain.shape[0]
        tests = {"language": test[ends[n_train:] < 0]}
    return TinyMemData(config=None, tokenizer=tok, train=full, train_kind=np.array(kinds), retain=retain,
                       tests=tests, prompt_len=prompt_len, k=k, artifact=artifact, **kw)
