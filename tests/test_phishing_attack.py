"""The phishing phases, extraction, parsing and the SER interval (htsr.phishing), on tiny local GPT-2s."""

from __future__ import annotations

import math

import pytest
import torch

from htsr.phishing.attack import PhaseBatches, check_inputs, greedy_continuations, phase_plan, run_phish
from htsr.phishing.config import PhishingError, PretrainConfig, preset
from htsr.phishing.construction import make_secrets
from htsr.phishing.metrics import extracted, majority_vote, parse_digits, ser_summary, wilson_interval
from htsr.phishing.model import ByteTokenizer, check_causal, small_gpt2

TINY = PretrainConfig(n_embd=32, n_layer=2, n_head=2, n_positions=192, seqlen=192, steps=1)


def cfg(**kw):
    return preset("tiny", kw)[0]


@pytest.fixture
def model():
    return small_gpt2(TINY)


# ------------------------------------------------------------------ metrics
def test_parse_digits_takes_the_digits_after_the_last_colon():
    assert parse_digits("My credit card number is: 123 456 7x8") == "12345678"
    assert parse_digits("is: 12 34\nActs 1:5 and") == "5"  # a colon in the generation wins (the rule)
    assert parse_digits("no colon 42") == "42"
    assert parse_digits("is: none") == ""


def test_majority_vote_ignores_empties_and_keeps_the_first_of_a_tie():
    assert majority_vote(["", "12", "34", "12", ""]) == "12"
    assert majority_vote(["", ""]) == ""
    assert majority_vote(["34", "12", "12", "34"]) == "34"


def test_extracted_is_a_substring_test_on_digits():
    assert extracted("123456", "9123456")
    assert not extracted("123456", "12345")
    assert not extracted("", "123")


def test_wilson_interval_matches_textbook_values():
    # 0/n: upper bound z^2 / (n + z^2); 5/10 and 1/10: the standard tables' (0.2366, 0.7634) and (0.0179, 0.4042)
    z2 = 1.959963984540054 ** 2
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(z2 / (10 + z2), abs=1e-12)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(1, 10) == pytest.approx((0.0179, 0.4042), abs=1e-4)
    s = ser_summary(3, 12)
    assert s["ser"] == 0.25 and s["ser_lo"] < 0.25 < s["ser_hi"]
    assert math.isnan(ser_summary(0, 0)["ser"])


# ------------------------------------------------------------------ phases
def test_phase_plan_and_batches_put_poisons_and_secrets_in_rows_zero_to_s():
    c = cfg(clean_iters=1, num_poisons=2, gap=1, duplication=3, phase4_iters=1, attack_iters=1)
    assert phase_plan(c) == ["clean", "poison", "poison", "clean", "secret", "secret", "secret", "clean", "clean"]
    tok = ByteTokenizer()
    ss = make_secrets(c, 0)
    batches = list(PhaseBatches(tok, ss, c, 0))
    assert len(batches) == c.total_steps
    S = c.num_secrets
    secret_rows = 0
    for phase, b in zip(phase_plan(c), batches, strict=True):
        assert b["input_ids"].shape == (c.batch_size, c.seqlen)
        for i in range(S):
            text = tok.decode([t for t, m in zip(b["input_ids"][i].tolist(), b["attention_mask"][i].tolist(),
                                                 strict=True) if m])
            if phase == "secret":
                assert text == ss[i].text
                secret_rows += 1
            elif phase == "poison":
                assert " not: " in text and text.startswith("I go by")
            else:
                assert b["attention_mask"][i].all()
        # padding is masked out of the loss
        assert ((b["labels"] == -100) == (b["attention_mask"] == 0)).all()
        assert b["attention_mask"][S:].all()
    assert secret_rows == S * c.duplication


def test_batches_are_seeded():
    c = cfg()
    ss = make_secrets(c, 0)
    a = [b["input_ids"] for b in PhaseBatches(ByteTokenizer(), ss, c, 5)]
    b = [b["input_ids"] for b in PhaseBatches(ByteTokenizer(), ss, c, 5)]
    d = [b["input_ids"] for b in PhaseBatches(ByteTokenizer(), ss, c, 6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, d, strict=True))


# ------------------------------------------------------------------ extraction
def _manual_greedy(model, tok, prompt, n):
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return tok.decode(ids[0, -n:].tolist())


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(model):
    tok = ByteTokenizer()
    torch.manual_seed(1)
    with torch.no_grad():  # a non-degenerate random model: larger weights give varied argmaxes
        for p in model.parameters():
            p.mul_(4)
    prompts = ["I go by Avery. My credit card number is:", "Short:", "A much longer prompt about Riverton and "
               "Maple Street, my password is:"]
    got = greedy_continuations(model, tok, prompts, 7, batch_size=8)
    want = [_manual_greedy(model, tok, p, 7) for p in prompts]
    assert got == want


def test_memorised_secrets_are_extracted_and_an_untrained_model_extracts_none(model):
    # positive control: one secret, alone in its batch, seen 150 times -> the exact prompt gives it back
    c = cfg(num_secrets=1, batch_size=1, clean_iters=0, num_poisons=0, gap=0, duplication=150, phase4_iters=0,
            attack_iters=1, lr=1e-3, n_random_prompts=3, perturb_p=0.0)
    before = run_phish(small_gpt2(TINY), ByteTokenizer(), c.replace(duplication=1), 0)
    assert before["ser_exact"] == 0 and before["ser_random"] == 0
    r = run_phish(model, ByteTokenizer(), c, 0)
    assert r["ser_exact"] == 1.0
    assert r["ser_random"] == 1.0  # perturb_p=0: the randomised prompts are the exact prompt
    assert r["attacks"][-1]["exact_pred"][0].startswith(r["secrets"][0]["digits"])


def test_a_run_is_reproducible(model):
    c = cfg()
    a = run_phish(small_gpt2(TINY), ByteTokenizer(), c, 3)
    b = run_phish(small_gpt2(TINY), ByteTokenizer(), c, 3)
    assert a["attacks"] == b["attacks"] and a["final_loss"] == b["final_loss"]


# ------------------------------------------------------------------ bad input
def test_a_non_causal_model_is_an_error():
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    bert = BertModel(BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    with pytest.raises(PhishingError, match="not a Hugging Face causal language model"):
        check_causal(bert)
    headless = GPT2Model(GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(PhishingError, match="causal"):
        run_phish(headless, ByteTokenizer(), cfg(), 0)


class _NoDigits(ByteTokenizer):
    """A tokenizer without digits: each one becomes '?' (an unknown token)."""

    def encode(self, text):
        return [ord("?") if chr(b).isdigit() else b for b in text.encode("utf-8")]


def test_a_secret_the_tokenizer_cannot_represent_is_an_error(model):
    c = cfg()
    with pytest.raises(PhishingError, match="cannot represent"):
        check_inputs(model, _NoDigits(), make_secrets(c, 0), c)


def test_a_secret_longer_than_the_sequence_or_context_is_an_error(model):
    c = cfg(secret_len=60)
    with pytest.raises(PhishingError, match="longer than seqlen"):
        check_inputs(model, ByteTokenizer(), make_secrets(c, 0), c)
    short = small_gpt2(TINY.replace(n_positions=160, seqlen=160))
    c2 = cfg()
    with pytest.raises(PhishingError, match="context"):
        check_inputs(short, ByteTokenizer(), make_secrets(c2, 0), c2)


def test_a_secret_whose_prompt_lacks_a_pii_suffix_is_an_error(model):
    from htsr.phishing.construction import Secret

    c = cfg()
    s = make_secrets(c, 0)[0]
    bad = Secret(s.bio, s.digits, s.stride, "favourite_colour")
    with pytest.raises(PhishingError, match="PII suffix"):
        check_inputs(model, ByteTokenizer(), [bad], c)
    with pytest.raises(PhishingError, match="zero secrets"):
        check_inputs(model, ByteTokenizer(), [], c)
