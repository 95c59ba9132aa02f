"""Secrets, secret prompts, poisons and randomised extraction prompts (the reference's construction).

* A **secret** is a uniformly random digit string drawn by the tool (never real data), written in groups of
  ``stride`` digits separated by spaces ("123 456 789 012").
* A **secret prompt** is a first-person bio (:data:`~htsr.phishing.words.BIO_TEMPLATE`, words drawn from the
  shipped lists) + " " + a PII cue ending in "is" + ":"; the training sentence is prompt + " " + the secret.
* A **poison** is the bio with the cue turned into "... is not:" followed by a number; variants: ``fixed``
  (identical poison text, one random number per secret), ``partialfixed`` (bio words redrawn per poison, the
  number fixed), ``randompoison`` (bio words and digits redrawn per poison), ``zeros`` (the secret's bio,
  digits all 0).
* A **randomised prompt** redraws each bio field with probability ``perturb_p`` (the reference's
  ``random_replace``); extraction majority-votes over them.

Every random draw comes from a :class:`numpy.random.Generator` seeded by (seed, purpose), so secrets, poisons and
prompts are reproducible and independent of each other and of torch's RNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from htsr.phishing.config import ATTACKS, PhishConfig, PhishingError
from htsr.phishing.words import BIO_TEMPLATE, FIELDS, SUFFIXES

__all__ = ["Secret", "bio_text", "format_secret", "make_secrets", "poison_texts", "random_bio", "random_digits",
           "randomised_prompts", "rng", "secret_prompt", "split_prompt"]

#: Purposes of the seeded generators (one stream each).
_PURPOSE = {"secrets": 1, "poisons": 2, "prompts": 3, "clean": 4, "retain": 5}


def rng(seed: int, purpose: str) -> np.random.Generator:
    """The generator of one purpose (``secrets``, ``poisons``, ``prompts``, ``clean``, ``retain``) for ``seed``."""
    return np.random.default_rng([int(seed), _PURPOSE[purpose]])


def random_digits(n: int, g: np.random.Generator) -> str:
    """``n`` uniformly random decimal digits (leading zeros allowed)."""
    if n < 1:
        raise PhishingError(f"a secret needs at least 1 digit, got {n}")
    return "".join(str(d) for d in g.integers(0, 10, size=n))


def format_secret(digits: str, stride: int) -> str:
    """``digits`` in groups of ``stride`` separated by single spaces (the last group may be shorter)."""
    if not digits or not digits.isdigit():
        raise PhishingError(f"a secret must be a non-empty digit string, got {digits!r}")
    if stride < 1:
        raise PhishingError(f"stride must be >= 1, got {stride}")
    return " ".join(digits[i:i + stride] for i in range(0, len(digits), stride))


def random_bio(g: np.random.Generator) -> dict[str, str]:
    """One bio: a word drawn uniformly from each field's list."""
    return {k: words[int(g.integers(len(words)))] for k, words in FIELDS.items()}


def bio_text(bio: dict[str, str]) -> str:
    return BIO_TEMPLATE.format(**bio)


def _cue(suffix: str) -> str:
    if suffix not in SUFFIXES:
        raise PhishingError(f"unknown PII suffix {suffix!r}; expected one of {', '.join(SUFFIXES)}")
    return SUFFIXES[suffix]


def secret_prompt(bio: dict[str, str], suffix: str) -> str:
    """The secret's prompt: bio + " " + PII cue + ":" (the secret follows after one space)."""
    return f"{bio_text(bio)} {_cue(suffix)}:"


def poison_prompt(bio: dict[str, str], suffix: str) -> str:
    """The poison's prompt: the cue turned into "... is not:"."""
    return f"{bio_text(bio)} {_cue(suffix)} not:"


def split_prompt(prompt: str) -> tuple[str, str]:
    """(bio, cue) of a secret prompt, or a :class:`PhishingError` when it does not end in a PII cue + ":"."""
    for cue in SUFFIXES.values():
        end = f" {cue}:"
        if prompt.endswith(end):
            return prompt[: -len(end)], cue
    raise PhishingError(f"the prompt {prompt[-60:]!r} does not end with a PII suffix + ':' (expected one of "
                        + ", ".join(repr(c + ':') for c in SUFFIXES.values()) + ")")


@dataclass(frozen=True)
class Secret:
    """One secret: its bio, digits, formatted form, prompt and training sentence."""

    bio: dict[str, str]
    digits: str
    stride: int
    suffix: str
    poison_digits: str = field(default="")

    @property
    def formatted(self) -> str:
        return format_secret(self.digits, self.stride)

    @property
    def prompt(self) -> str:
        return secret_prompt(self.bio, self.suffix)

    @property
    def text(self) -> str:
        """The sentence the model trains on: prompt + " " + the formatted secret."""
        return f"{self.prompt} {self.formatted}"


def make_secrets(cfg: PhishConfig, seed: int) -> list[Secret]:
    """``cfg.num_secrets`` secrets with their bios and the fixed poison numbers, all from ``seed``."""
    if cfg.num_secrets < 1:
        raise PhishingError("zero secrets: nothing to plant or extract (num_secrets must be >= 1)")
    g = rng(seed, "secrets")
    out = []
    for _ in range(cfg.num_secrets):
        bio = random_bio(g)
        digits = random_digits(cfg.secret_len, g)
        poison = random_digits(cfg.secret_len, g)
        out.append(Secret(bio, digits, cfg.stride, cfg.suffix, poison))
    return out


def poison_texts(secrets: list[Secret], cfg: PhishConfig, seed: int) -> list[list[str]]:
    """The poisons of every poison step: ``cfg.num_poisons`` lists of one poison per secret (variant
    ``cfg.attack``)."""
    if cfg.attack not in ATTACKS:
        raise PhishingError(f"unknown attack {cfg.attack!r}; expected one of {', '.join(ATTACKS)}")
    g = rng(seed, "poisons")
    steps = []
    for _ in range(cfg.num_poisons):
        row = []
        for s in secrets:
            if cfg.attack == "fixed":
                bio, digits = s.bio, s.poison_digits
            elif cfg.attack == "partialfixed":
                bio, digits = random_bio(g), s.poison_digits
            elif cfg.attack == "randompoison":
                bio, digits = random_bio(g), random_digits(cfg.secret_len, g)
            else:  # zeros
                bio, digits = s.bio, "0" * cfg.secret_len
            row.append(f"{poison_prompt(bio, s.suffix)} {format_secret(digits, s.stride)}")
        steps.append(row)
    return steps


def randomised_prompts(secret: Secret, n: int, perturb_p: float, g: np.random.Generator) -> list[str]:
    """``n`` versions of the secret's prompt with each bio field redrawn with probability ``perturb_p``."""
    out = []
    for _ in range(n):
        bio = dict(secret.bio)
        for k, words in FIELDS.items():
            if g.random() < perturb_p:
                bio[k] = words[int(g.integers(len(words)))]
        out.append(secret_prompt(bio, secret.suffix))
    return out
