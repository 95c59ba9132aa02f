"""Every neural-phishing setting, stated once: the attack (:class:`PhishConfig`), the small pretrained model
(:class:`PretrainConfig`) and the defence (:class:`DefendConfig`), with the presets ``tiny`` (tests), ``cpu``
(this machine) and ``paper`` (the reference's grid on a Pythia-sized model, a GPU).

Defaults of :class:`PhishConfig` are the reference's (Panda et al., ICLR 2024, ``neural-phishing-attack``
``main.py``/``grid_search.sh``; `/work/shared/research/methods_mem_phish_htgd.md` section 2): 10 secrets of 12
digits in groups of 3, 100 poison steps, the secret seen twice, 100 clean steps before, between and after, 100
attack steps, AdamW lr 5e-5, batch 64, sequences of 64 tokens, 100 randomised prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from htsr.config import Config, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError
from htsr.phishing.words import SUFFIXES

__all__ = ["ATTACKS", "PRESETS", "DefendConfig", "PhishConfig", "PhishingError", "PretrainConfig", "preset"]

#: The poison variants (the reference's ``--attack_type``; ``chaos``/``chaosnot`` are not implemented).
ATTACKS = ("fixed", "partialfixed", "randompoison", "zeros")


class PhishingError(ConfigError):
    """Bad phishing input (no secrets, a prompt without its PII cue, a secret that does not fit the tokenizer or
    the context, a model that is not a causal LM), raised before any training."""


@dataclass(frozen=True)
class PhishConfig(Config):
    """One phishing run: the secrets, the poisons, the training phases and the extraction."""

    label: ClassVar[str] = "the phishing run"

    num_secrets: int = 10
    secret_len: int = 12          # digits per secret
    stride: int = 3               # digits per space-separated group
    suffix: str = "credit_card"   # the PII cue (words.SUFFIXES)
    attack: Literal["fixed", "partialfixed", "randompoison", "zeros"] = "fixed"
    num_poisons: int = 100        # poison steps (each holds one poison per secret)
    duplication: int = 2          # secret steps: each secret seen this many times
    clean_iters: int = 100        # clean steps before the poisons
    gap: int = 100                # clean steps between poisons and secrets (the reference's phase_2p5_iters)
    phase4_iters: int = 100       # clean steps after the secrets, before attacking
    attack_iters: int = 100       # further clean steps, attacking after each (every ``attack_every``-th)
    attack_every: int = 1
    stop_when_all: bool = True    # stop attacking once every secret was extracted (the reference does)
    batch_size: int = 64
    seqlen: int = 64              # tokens per training row
    lr: float = 5e-5
    weight_decay: float = 0.01    # torch AdamW's default (the reference does not set it)
    n_random_prompts: int = 100   # randomised prompts per secret (majority vote); 0: exact prompt only
    perturb_p: float = 0.5        # chance that each bio field is redrawn in a randomised prompt
    gen_margin: int = 2           # greedy tokens generated beyond the secret's own length
    gen_batch: int = 128
    device: str = "cpu"

    def validate(self) -> None:
        if self.num_secrets < 1:
            raise PhishingError(f"num_secrets must be >= 1 (zero secrets: nothing to extract), got {self.num_secrets}")
        if self.secret_len < 1:
            raise PhishingError(f"secret_len must be >= 1 digit, got {self.secret_len}")
        check_positive_int("stride", self.stride)
        check_choice("suffix", self.suffix, tuple(SUFFIXES))
        check_choice("attack", self.attack, ATTACKS)
        for name in ("num_poisons", "clean_iters", "gap", "phase4_iters", "n_random_prompts", "gen_margin"):
            check_positive_int(name, getattr(self, name), 0)
        for name in ("duplication", "attack_iters", "attack_every", "batch_size", "seqlen", "gen_batch"):
            check_positive_int(name, getattr(self, name))
        if self.num_secrets > self.batch_size:
            raise PhishingError(f"num_secrets ({self.num_secrets}) must be <= batch_size ({self.batch_size}): each "
                                "poison/secret step puts one row per secret in a batch")
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("perturb_p", self.perturb_p, 0, 1)

    @property
    def total_steps(self) -> int:
        return (self.clean_iters + self.num_poisons + self.gap + self.duplication + self.phase4_iters
                + self.attack_iters)


@dataclass(frozen=True)
class PretrainConfig(Config):
    """The small GPT-2-style byte-level LM pretrained here on the KJV (Luke and Acts held out for perplexity)."""

    label: ClassVar[str] = "the pretrained model"

    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_positions: int = 256
    seqlen: int = 192
    batch_size: int = 16
    steps: int = 600
    lr: float = 2e-3
    ppl_windows: int = 64         # held-out windows for the perplexity (0: all of Luke and Acts)
    seed: int = 0

    def validate(self) -> None:
        for name in ("n_embd", "n_layer", "n_head", "n_positions", "seqlen", "batch_size", "steps"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("ppl_windows", self.ppl_windows, 0)
        check_positive_int("seed", self.seed, 0)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.seqlen > self.n_positions:
            raise ConfigError(f"seqlen ({self.seqlen}) must be <= n_positions ({self.n_positions})")
        check_range("lr", self.lr, 0, lo_open=True)


@dataclass(frozen=True)
class DefendConfig(Config):
    """The defence check: TinyMem unlearning (htsr.memorization) on the phished model, the extracted secrets as the
    forget set, clean KJV windows as the retain set. ``forget``: ``extracted`` (the secrets the attack got) or
    ``all`` (every secret: the data owner knows what it trained on)."""

    label: ClassVar[str] = "the defence"

    methods: tuple[str, ...] = ("balanced_subnet", "durable", "activations")
    forget: Literal["extracted", "all"] = "extracted"
    n_retain: int = 64
    ppl_windows: int = 64

    def validate(self) -> None:
        from htsr.memorization.config import UNLEARNING

        if not self.methods:
            raise ConfigError("methods must list at least one unlearning method")
        for m in self.methods:
            check_choice("unlearning method", m, UNLEARNING.names())
        check_choice("forget", self.forget, ("extracted", "all"))
        check_positive_int("n_retain", self.n_retain)
        check_positive_int("ppl_windows", self.ppl_windows, 0)


#: Preset -> (PhishConfig overrides, PretrainConfig overrides). ``paper`` needs a local Pythia directory (--model).
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "tiny": ({"num_secrets": 4, "secret_len": 6, "num_poisons": 6, "clean_iters": 2, "gap": 2, "phase4_iters": 2,
              "attack_iters": 2, "batch_size": 8, "seqlen": 192, "lr": 1e-3, "n_random_prompts": 4},
             {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 192, "seqlen": 192, "batch_size": 8,
              "steps": 20, "ppl_windows": 4}),
    "cpu": ({"num_secrets": 8, "secret_len": 6, "num_poisons": 25, "clean_iters": 10, "gap": 10, "phase4_iters": 10,
             "attack_iters": 5, "batch_size": 16, "seqlen": 192, "lr": 1e-3, "n_random_prompts": 8},
            {}),
    "paper": ({"device": "cuda"}, None),
}


def preset(name: str, overrides: dict[str, Any] | None = None) -> tuple[PhishConfig, PretrainConfig | None]:
    """The preset's configs with ``overrides`` (PhishConfig field names) applied; ``paper`` has no pretrain config
    (its model is a local Pythia directory)."""
    check_choice("preset", name, tuple(PRESETS))
    phish, pre = PRESETS[name]
    cfg = PhishConfig.from_dict({**phish, **(overrides or {})})
    return cfg, (PretrainConfig.from_dict(pre) if pre is not None else None)
