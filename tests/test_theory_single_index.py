"""Single-index heavy-tail study: data, model, measurements, the training run (small sizes, real training)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from htsr.errors import ConfigError
from htsr.theory.single_index import (
    SingleIndexConfig,
    TwoLayerStudent,
    features,
    kernel_target_alignment,
    make_data,
    measure,
    onsets,
    ridge_refit,
    run_single_index,
    teacher_alignment,
)
from tests.theory_notes import theory_notes

SMALL = SingleIndexConfig(n=400, n_test=100, d=200, h=300, steps=6)
TINY = SingleIndexConfig(n=80, n_test=20, d=40, h=60, steps=3)


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    yield


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("changes, word", [
    ({"optimizer": "sgd"}, "optimizer"), ({"lr": 0.0}, "lr"), ({"lr": math.inf}, "lr"), ({"n": 0}, "n"),
    ({"d": 2}, "d and h"), ({"steps": 1.5}, "steps"), ({"feature_scaling": "double"}, "feature_scaling"),
    ({"lr_gamma": 1.5}, "lr_gamma"), ({"ridge_lambda": -1.0}, "ridge_lambda"), ({"dtype": "float16"}, "dtype"),
    ({"adam_betas": (0.9, 1.0)}, "adam_betas"), ({"label_noise_std": -0.1}, "label_noise_std"),
])
def test_bad_config_is_a_clear_error(changes, word):
    with pytest.raises(ConfigError, match=word):
        SingleIndexConfig(**changes)


def test_replace_validates_and_rejects_unknown_fields():
    assert TINY.replace(lr=0.5).lr == 0.5
    with pytest.raises(ConfigError, match="unknown option.*'learning_rate'.*valid: .*lr"):
        TINY.replace(learning_rate=0.5)
    with pytest.raises(ConfigError, match="optimizer"):
        TINY.replace(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="n must be an integer"):
        SingleIndexConfig.from_dict({"n": "abc"})
    assert SingleIndexConfig.from_dict({"n": "80", "lr": "0.5"}).replace(n=90).to_dict()["n"] == 90


def test_defaults_are_the_papers_setup():
    """The defaults against the paper's setup as the research notes record it from the reference's configs/main.yml
    (section 3.1 of methods_mem_phish_htgd.md), parsed from that file: not literals typed here."""
    notes = theory_notes()
    sizes = re.search(r"\*\*Sizes\*\* \(`main.yml`\): n=(\d+) \(full batch\), d=(\d+), h=(\d+), n_test=(\d+)", notes)
    noise = re.search(r"`label_noise_std=(\d+(?:\.\d+)?)`", notes)
    steps = re.search(r"`num_epochs=(\d+)`, i\.e\. \*\*(\d+) steps\*\*", notes)
    default = re.search(r"single-run default is (\w+) with η=(\d+(?:\.\d+)?)", notes)
    ridge = re.search(r"Refit the last layer by ridge.*?with λ=(\d+(?:\.\d+)?)", notes)
    adam = re.search(r"Full-batch Adam: torch defaults β=\((\d\.\d+), (\d\.\d+)\), eps (\d+e-\d+)", notes)
    gd = re.search(r"Full-batch GD: `torch.optim.SGD`, momentum (\d+), weight decay (\d+)", notes)
    frozen = re.search(r"\*\*a is frozen\*\* \(`fix_last_layer: (\w+)`\)", notes)
    assert all((sizes, noise, steps, default, ridge, adam, gd, frozen)), "the notes changed: update the parser"
    c = SingleIndexConfig()
    assert (c.n, c.d, c.h, c.n_test) == tuple(int(v) for v in sizes.groups())
    assert c.label_noise_std == float(noise.group(1))
    assert c.steps == int(steps.group(1)) == int(steps.group(2))
    assert (c.optimizer, c.lr) == (default.group(1).lower(), float(default.group(2)))
    assert c.ridge_lambda == float(ridge.group(1))
    assert c.adam_betas == (float(adam.group(1)), float(adam.group(2))) and c.adam_eps == float(adam.group(3))
    assert (c.momentum, c.weight_decay) == (float(gd.group(1)), float(gd.group(2)))
    assert c.fix_last_layer is (frozen.group(1) == "true")
    assert c.feature_scaling == "intended"  # the notes' "Implement the intended /√d"
    assert "Implement the intended /√d" in notes


# ----------------------------------------------------------------------------- data and seeds


def test_data_is_seeded_and_follows_the_teacher():
    a, b, c = make_data(TINY), make_data(TINY), make_data(TINY.replace(seed=1))
    for name in ("beta", "X", "y", "X_probe", "y_probe", "X_test", "y_test", "W0", "a0"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert not torch.equal(getattr(a, name), getattr(c, name)), name
    assert a.X.shape == (80, 40) and a.X_test.shape == (20, 40) and a.W0.shape == (60, 40) and a.a0.shape == (60,)
    assert float(a.beta.norm()) == pytest.approx(1.0, abs=1e-6)
    assert not torch.equal(a.X, a.X_probe)  # independent streams
    # noiseless labels are exactly softplus(<beta, x>)
    clean = make_data(TINY.replace(label_noise_std=0.0))
    assert torch.allclose(clean.y, torch.nn.functional.softplus(clean.X @ clean.beta))
    resid = a.y - torch.nn.functional.softplus(a.X @ a.beta)
    assert 0.2 < float(resid.std()) < 0.4  # noise std 0.3


def test_same_seed_same_run_different_seed_different_run():
    h1 = run_single_index(TINY).history
    h2 = run_single_index(TINY).history
    h3 = run_single_index(TINY.replace(seed=5)).history
    num = h1.select_dtypes("number").columns
    assert np.array_equal(h1[num].to_numpy(), h2[num].to_numpy(), equal_nan=True)
    assert not np.allclose(h1["alpha_hill"].to_numpy(), h3["alpha_hill"].to_numpy())


# ----------------------------------------------------------------------------- model and the scaling fix


def test_features_use_one_sqrt_d_and_the_reference_quirk_uses_d():
    data = make_data(TINY)
    W, X = data.W0, data.X_probe
    intended = features(W, X)
    assert torch.allclose(intended, torch.tanh(X.double() @ W.double().T / math.sqrt(40)) / math.sqrt(60), atol=1e-6)
    model = TwoLayerStudent(data.W0, data.a0)
    assert torch.allclose(intended, model.hidden(X).double(), atol=1e-6)  # the network's own hidden layer
    quirk = features(W, X, "reference")
    assert torch.allclose(quirk, torch.tanh(X.double() @ W.double().T / 40) / math.sqrt(60), atol=1e-6)
    assert float((quirk - intended).abs().max()) > 0.05
    with pytest.raises(ConfigError, match="scaling"):
        features(W, X, "sqrt_d")


def test_measure_evaluates_the_intended_features():
    cfg = TINY
    data = make_data(cfg)
    row, evals, _ = measure(data.W0, data, cfg)
    Z = TwoLayerStudent(data.W0, data.a0).hidden(data.X_probe).double()
    assert row["kta"] == pytest.approx(kernel_target_alignment(Z, data.y_probe), rel=1e-6)
    row_q, _, _ = measure(data.W0, data, cfg.replace(feature_scaling="reference"))
    assert row_q["kta"] != pytest.approx(row["kta"], rel=1e-3)
    assert evals.shape == (40,) and np.all(np.diff(evals) >= 0)
    ref = np.sort(np.linalg.svd(data.W0.double().numpy(), compute_uv=False) ** 2)
    assert np.allclose(evals, ref, rtol=1e-8)


def test_last_layer_is_frozen_by_default_and_trainable_on_request():
    data = make_data(TINY)
    frozen = TwoLayerStudent(data.W0, data.a0)
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == ["W"]
    free = TwoLayerStudent(data.W0, data.a0, fix_last_layer=False)
    assert sorted(n for n, p in free.named_parameters()) == ["W", "a"]
    with pytest.raises(ConfigError):
        TwoLayerStudent(data.W0, data.a0[:-1])


# ----------------------------------------------------------------------------- measurements on hand-made cases


def test_alignment_of_a_planted_spike():
    rng = np.random.default_rng(0)
    h, d = 300, 200
    beta = rng.standard_normal(d)
    beta /= np.linalg.norm(beta)
    u = rng.standard_normal(h)
    bulk = rng.standard_normal((h, d))
    # edge of the bulk's singular values ~ sqrt(h) + sqrt(d) ~ 31; a rank-one spike of norm 300 dominates
    spiked = bulk + 300.0 * np.outer(u / np.linalg.norm(u), beta)
    assert teacher_alignment(spiked, beta) > 0.99
    assert teacher_alignment(bulk, beta) < 0.25  # a random direction: ~ 1/sqrt(d)
    # exact against a dense eigensolver (not ARPACK), and invariant to the scale of beta
    for W in (bulk, spiked):
        v1 = np.linalg.eigh(W.T @ W)[1][:, -1]
        assert teacher_alignment(W, 3.0 * beta) == pytest.approx(abs(v1 @ beta), abs=1e-8)
    assert teacher_alignment(torch.from_numpy(spiked).float(), torch.from_numpy(beta)) > 0.99
    with pytest.raises(ConfigError):
        teacher_alignment(bulk, beta[:-1])


def test_kta_hand_computed_cases():
    # Z = I_2, y = (1, 0): <K, yy^T> = 1, ||K||_F = sqrt(2), ||yy^T||_F = 1
    assert kernel_target_alignment(torch.eye(2), torch.tensor([1.0, 0.0])) == pytest.approx(1 / math.sqrt(2))
    # features equal to the labels: perfectly aligned
    y = torch.tensor([1.0, -2.0, 0.5, 3.0])
    assert kernel_target_alignment(y[:, None], y) == pytest.approx(1.0)
    # a feature orthogonal to y: zero
    assert kernel_target_alignment(torch.tensor([[1.0], [1.0], [0.0], [0.0]]),
                                   torch.tensor([1.0, -1.0, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-12)
    # the Gram-matrix shortcut equals the n x n definition on random data
    g = torch.Generator().manual_seed(0)
    Z, yr = torch.randn(30, 7, generator=g, dtype=torch.float64), torch.randn(30, generator=g, dtype=torch.float64)
    K, Ky = Z @ Z.T, torch.outer(yr, yr)
    brute = float((K * Ky).sum() / (torch.linalg.matrix_norm(K) * torch.linalg.matrix_norm(Ky)))
    assert kernel_target_alignment(Z, yr) == pytest.approx(brute, rel=1e-10)
    with pytest.raises(ConfigError):
        kernel_target_alignment(Z, yr[:-1])


def test_ridge_refit_matches_the_closed_form():
    g = torch.Generator().manual_seed(1)
    n, h, lam = 50, 8, 0.3
    Z, y = torch.randn(n, h, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    expect = np.linalg.solve(Z.numpy().T @ Z.numpy() + lam / h * n * np.eye(h), Z.numpy().T @ y.numpy())
    assert np.allclose(ridge_refit(Z, y, lam).numpy(), expect, rtol=1e-10)


# ----------------------------------------------------------------------------- the run


def test_run_trains_w_only_and_records_every_step():
    run = run_single_index(TINY)
    h = run.history
    assert list(h["step"]) == [0, 1, 2, 3]
    assert set(run.evals) == {0, 1, 3}
    assert h["weight_change_fro"].iloc[0] == 0.0 and h["weight_change_fro"].iloc[-1] > 0
    # the step-0 student loss is the init model's full-batch MSE
    data = make_data(TINY)
    with torch.no_grad():
        l0 = float(torch.nn.functional.mse_loss(TwoLayerStudent(data.W0, data.a0)(data.X), data.y))
    assert h["student_train_loss"].iloc[0] == pytest.approx(l0, rel=1e-5)
    assert h["student_train_loss"].notna().all()
    every2 = run_single_index(TINY.replace(steps=5, measure_every=2), keep_evals=None)
    assert list(every2.history["step"]) == [0, 2, 4, 5] and set(every2.evals) == {0, 2, 4, 5}


def test_large_rate_makes_the_tail_heavier_and_the_spike_comes_first():
    small = run_single_index(SMALL.replace(optimizer="adam", lr=1e-3))
    large = run_single_index(SMALL.replace(optimizer="adam", lr=1.0))
    a0 = small.history["alpha_hill"].iloc[0]
    assert abs(small.final["alpha_hill"] - a0) < 0.05
    assert large.final["alpha_hill"] < a0 - 0.4
    assert large.final["spike_ratio"] > 5 and small.final["spike_ratio"] < 1.2
    on = large.onsets()
    assert on["spike_step"] == 1 and on["tail_step"] > on["spike_step"]
    assert math.isnan(small.onsets()["spike_step"]) and math.isnan(small.onsets()["tail_step"])
    gd = run_single_index(SMALL.replace(optimizer="gd", lr=2000.0))
    assert gd.final["alpha_hill"] < a0 - 0.4


def test_onsets_on_a_hand_made_history():
    import pandas as pd

    h = pd.DataFrame({"step": [0, 1, 2, 3], "alpha_hill": [2.5, 2.45, 2.2, 2.0], "spike_ratio": [1.0, 3.0, 5.0, 9.0]})
    assert onsets(h) == {"spike_step": 1.0, "tail_step": 2.0}  # 2.2 <= 2.5 - 0.2
    assert onsets(h, alpha_drop=0.4) == {"spike_step": 1.0, "tail_step": 3.0}
    assert math.isnan(onsets(h, alpha_drop=1.0)["tail_step"])


def test_trainable_last_layer_and_step_lr_run():
    run = run_single_index(TINY.replace(fix_last_layer=False, lr_gamma=0.5, optimizer="gd", lr=5.0))
    assert run.history["student_train_loss"].iloc[-1] < run.history["student_train_loss"].iloc[0]
    flat = run_single_index(TINY.replace(fix_last_layer=False, optimizer="gd", lr=5.0))
    # the step decay really changes the trajectory (same start, different later losses)
    assert run.history["student_train_loss"].iloc[0] == flat.history["student_train_loss"].iloc[0]
    assert run.history["student_train_loss"].iloc[-1] != flat.history["student_train_loss"].iloc[-1]


def test_data_for_another_size_is_refused():
    with pytest.raises(ConfigError, match="data was drawn"):
        run_single_index(TINY.replace(h=50), make_data(TINY))
