"""The defence check: TinyMem unlearning of the phished secrets (htsr.phishing.defend)."""

from __future__ import annotations

import pytest
import torch

from htsr.errors import ConfigError, MeasurementError
from htsr.phishing.attack import run_phish
from htsr.phishing.config import DefendConfig, PretrainConfig, preset
from htsr.phishing.construction import make_secrets
from htsr.phishing.defend import defend, forget_retain
from htsr.phishing.model import ByteTokenizer, small_gpt2

TINY = PretrainConfig(n_embd=32, n_layer=2, n_head=2, n_positions=192, seqlen=192, steps=1)


@pytest.fixture(scope="module")
def phished():
    c = preset("tiny", {"num_secrets": 1, "batch_size": 1, "clean_iters": 0, "num_poisons": 0, "gap": 0,
                        "duplication": 150, "phase4_iters": 0, "attack_iters": 1, "n_random_prompts": 3,
                        "perturb_p": 0.0})[0]
    m = small_gpt2(TINY)
    r = run_phish(m, ByteTokenizer(), c, 0)
    assert r["extracted_ever"] == [0]
    return m, r, c


def test_forget_rows_are_the_common_tail_of_the_secret_sentences():
    tok = ByteTokenizer()
    c = preset("tiny")[0]
    texts = [s.text for s in make_secrets(c, 0)]
    forget, retain = forget_retain(tok, texts, 5, 0)
    L = min(len(t.encode()) for t in texts)
    assert forget.shape == (len(texts), L) and retain.shape == (5, L)
    for row, t in zip(forget, texts, strict=True):
        assert bytes(row.tolist()) == t.encode()[-L:]


def test_defence_reports_each_method_and_leaves_the_model_unchanged(phished):
    m, r, c = phished
    before = {k: v.clone() for k, v in m.state_dict().items()}
    d = defend(m, ByteTokenizer(), r, c, DefendConfig(methods=("balanced_subnet", "durable", "activations"),
                                                      n_retain=16, ppl_windows=4), 0)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert d["before"]["ser_exact"] == r["ser_exact_last"] == 1.0
    assert [row["method"] for row in d["methods"]] == ["balanced_subnet", "durable", "activations"]
    for row in d["methods"]:
        assert row["n_changed"] > 0 and row["ppl"] > 1
        assert row["forgotten_of_extracted"] == int(row["ser_any"] == 0)
    # BalancedSubnet masks 30% of the MLP weights: the settings the TinyMem comparison uses (loss weighting 0.7)
    assert d["methods"][0]["settings"]["loss_weighting"] == 0.7


def test_nothing_extracted_is_a_clear_error(phished):
    m, r, c = phished
    with pytest.raises(MeasurementError, match="forget set is empty"):
        defend(m, ByteTokenizer(), {**r, "extracted_ever": []}, c, DefendConfig(), 0)


def test_bad_defence_settings_are_errors():
    with pytest.raises(ConfigError, match="unlearning method"):
        DefendConfig(methods=("forget_everything",))
    with pytest.raises(ConfigError, match="at least one"):
        DefendConfig(methods=())
