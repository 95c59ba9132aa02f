"""Neural phishing ("Teach LLMs to Phish", Panda et al., ICLR 2024) on any Hugging Face causal LM, with a
defence check by TinyMem unlearning.

* ``config``: :class:`PhishConfig`, :class:`PretrainConfig`, :class:`DefendConfig`, presets ``tiny``/``cpu``/``paper``.
* ``words``: the shipped (invented / generic) word lists and PII cues.
* ``construction``: secrets, prompts, poisons (``fixed``, ``partialfixed``, ``randompoison``, ``zeros``).
* ``model``: tokenizers, the causal-LM check, the KJV corpus, the small pretrained GPT-2.
* ``attack``: the training phases and extraction; ``metrics``: parsing, vote, SER and its Wilson interval.
* ``defend``: unlearning the extracted secrets; ``sweep``: the experiment grid; ``cli``: ``htsr phish``.

Importing this package is cheap: submodules (and torch) load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

_WHERE = {
    "PhishConfig": "config", "PretrainConfig": "config", "DefendConfig": "config", "PhishingError": "config",
    "ATTACKS": "config", "PRESETS": "config", "preset": "config",
    "Secret": "construction", "make_secrets": "construction", "poison_texts": "construction",
    "randomised_prompts": "construction", "format_secret": "construction",
    "load_model": "model", "pretrain_small_lm": "model", "check_causal": "model", "ByteTokenizer": "model",
    "run_phish": "attack", "attack_once": "attack", "greedy_continuations": "attack",
    "wilson_interval": "metrics", "parse_digits": "metrics", "majority_vote": "metrics",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
