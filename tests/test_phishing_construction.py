"""Secrets, prompts, poisons and randomised prompts of the neural-phishing attack (htsr.phishing)."""

from __future__ import annotations

import re
import string

import numpy as np
import pytest

from htsr.errors import ConfigError
from htsr.phishing.config import PhishConfig, PhishingError, preset
from htsr.phishing.construction import (
    format_secret,
    make_secrets,
    poison_texts,
    random_digits,
    randomised_prompts,
    split_prompt,
)
from htsr.phishing.words import BIO_TEMPLATE, FIELDS, SUFFIXES


def cfg(**kw) -> PhishConfig:
    return preset("tiny", kw)[0]


def test_format_secret_groups_by_stride():
    assert format_secret("123456789012", 3) == "123 456 789 012"
    assert format_secret("123456789012", 5) == "12345 67890 12"
    assert format_secret("7", 3) == "7"


def test_word_lists_fill_the_template_and_have_no_duplicates():
    fields = {f for _, f, _, _ in string.Formatter().parse(BIO_TEMPLATE) if f}
    assert fields == set(FIELDS)
    for name, words in FIELDS.items():
        assert len(words) == len(set(words)) and len(words) >= 10, name
    assert all(c.endswith(" is") for c in SUFFIXES.values())


def test_secrets_are_seeded_digit_strings_of_the_asked_length():
    c = cfg(num_secrets=4, secret_len=12)
    a, b, other = make_secrets(c, 3), make_secrets(c, 3), make_secrets(c, 4)
    assert [s.digits for s in a] == [s.digits for s in b]
    assert [s.digits for s in a] != [s.digits for s in other]
    for s in a:
        assert len(s.digits) == 12 and s.digits.isdigit()
        assert s.text == s.prompt + " " + s.formatted
        assert s.prompt.endswith(SUFFIXES["credit_card"] + ":")
        assert re.fullmatch(r"(\d{3} ){3}\d{3}", s.formatted)


def test_random_digits_are_uniform():
    # 20,000 digits: every digit's count within 5 standard deviations of 2,000 (binomial sd ~ 42)
    d = random_digits(20000, np.random.default_rng(0))
    counts = np.bincount([int(c) for c in d], minlength=10)
    assert np.all(np.abs(counts - 2000) < 5 * np.sqrt(20000 * 0.1 * 0.9))


def test_fixed_poison_is_the_secret_bio_with_is_not_and_one_number():
    c = cfg(attack="fixed", num_poisons=5)
    ss = make_secrets(c, 0)
    steps = poison_texts(ss, c, 0)
    assert len(steps) == 5 and all(len(row) == len(ss) for row in steps)
    for i, s in enumerate(ss):
        texts = {row[i] for row in steps}
        assert len(texts) == 1  # identical poison text in every step
        (t,) = texts
        expected = s.prompt[:-1] + " not: " + format_secret(s.poison_digits, s.stride)
        assert t == expected


def test_partialfixed_redraws_bios_but_keeps_the_number():
    c = cfg(attack="partialfixed", num_poisons=20)
    ss = make_secrets(c, 1)
    steps = poison_texts(ss, c, 1)
    for i, s in enumerate(ss):
        col = [row[i] for row in steps]
        assert len(set(col)) > 1
        assert all(t.endswith(" not: " + format_secret(s.poison_digits, s.stride)) for t in col)


def test_randompoison_redraws_the_digits_and_zeros_are_zeros():
    c = cfg(attack="randompoison", num_poisons=20)
    ss = make_secrets(c, 2)
    tails = {row[0].rsplit(":", 1)[1] for row in poison_texts(ss, c, 2)}
    assert len(tails) > 10
    cz = cfg(attack="zeros", num_poisons=3, secret_len=6)
    sz = make_secrets(cz, 2)
    for row in poison_texts(sz, cz, 2):
        assert row[0] == sz[0].prompt[:-1] + " not: 000 000"


def test_poisons_never_contain_the_secret_prompt_cue():
    c = cfg(attack="randompoison", num_poisons=10)
    ss = make_secrets(c, 0)
    for row in poison_texts(ss, c, 0):
        for t in row:
            assert " is not:" in t and " is:" not in t


def test_randomised_prompts_redraw_fields_with_probability_p():
    c = cfg()
    s = make_secrets(c, 0)[0]
    same = randomised_prompts(s, 5, 0.0, np.random.default_rng(0))
    assert same == [s.prompt] * 5
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    a, b = randomised_prompts(s, 50, 1.0, g1), randomised_prompts(s, 50, 1.0, g2)
    assert a == b and len(set(a)) > 40
    for p in a:
        bio, cue = split_prompt(p)
        assert cue == SUFFIXES["credit_card"]


def test_zero_secrets_is_an_error():
    with pytest.raises(PhishingError, match="num_secrets must be >= 1"):
        cfg(num_secrets=0)


def test_bad_settings_are_errors():
    with pytest.raises(PhishingError, match="secret_len"):
        cfg(secret_len=0)
    with pytest.raises(PhishingError, match="batch_size"):
        cfg(num_secrets=9, batch_size=8)
    with pytest.raises(ConfigError, match="attack"):
        cfg(attack="chaos")
    with pytest.raises(ConfigError, match="suffix"):
        cfg(suffix="blood_type")
    with pytest.raises(ConfigError, match="unknown"):
        PhishConfig.from_dict({"poisons": 3})


def test_a_prompt_without_a_pii_suffix_is_an_error():
    with pytest.raises(PhishingError, match="PII suffix"):
        split_prompt("I go by Avery, 30, a chef at Bluefin Labs. My favourite colour is:")
    with pytest.raises(PhishingError, match="PII suffix"):
        split_prompt("I go by Avery. My credit card number is")  # the ':' is missing
