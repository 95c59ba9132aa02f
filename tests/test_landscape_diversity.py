"""Ensemble diversity metrics: disagreement, DER, prediction variance, ensemble accuracy/NLL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.landscape.diversity import (
    collect_outputs,
    disagreement,
    disagreement_error_ratio,
    disagreement_matrix,
    ensemble_metrics,
    errors,
    prediction_bias2,
    prediction_variance,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# three members, five samples, three classes; predictions: m0 = [0,1,2,0,1], m1 = [0,1,1,0,2], m2 = [2,1,2,0,1]
OUT = np.array([
    [[3, 0, 0], [0, 2, 1], [0, 1, 5], [4, 1, 0], [0, 3, 1]],
    [[2, 1, 0], [0, 4, 1], [0, 3, 2], [5, 0, 0], [0, 1, 2]],
    [[0, 0, 1], [1, 3, 0], [1, 0, 2], [2, 1, 1], [1, 2, 0]],
], dtype=float)
Y = np.array([0, 1, 2, 1, 1])


def test_disagreement_by_hand():
    assert disagreement(OUT[0], OUT[1]) == pytest.approx(2 / 5)  # samples 2 and 4
    assert disagreement(OUT[0], OUT[2]) == pytest.approx(1 / 5)  # sample 0
    assert disagreement(OUT[1], OUT[2]) == pytest.approx(3 / 5)  # samples 0, 2, 4
    m = disagreement_matrix(OUT)
    np.testing.assert_allclose(m, [[0, 0.4, 0.2], [0.4, 0, 0.6], [0.2, 0.6, 0]])
    # list input and torch input give the same
    np.testing.assert_allclose(disagreement_matrix([torch.tensor(o) for o in OUT]), m)


def test_der_by_hand():
    # errors: m0 wrong on sample 3 (1/5); m1 wrong on 2, 3, 4 (3/5); m2 wrong on 0, 3 (2/5)
    np.testing.assert_allclose(errors(OUT, Y), [0.2, 0.6, 0.4])
    mean_dis = (0.4 + 0.2 + 0.6) / 3
    assert disagreement_error_ratio(OUT, Y) == pytest.approx(mean_dis / 0.4)
    # all members perfect: DER undefined (NaN, not inf)
    assert np.isnan(disagreement_error_ratio(OUT[:, :3][[0, 0]], Y[:3]))


def test_prediction_variance_is_unbiased_member_variance():
    g = np.random.default_rng(0)
    out = g.normal(size=(4, 30, 5))
    # independent formula: per sample and class, the unbiased variance over members; summed over classes
    want = np.var(out, axis=0, ddof=1).sum(-1).mean()
    assert prediction_variance(out) == pytest.approx(want, rel=1e-12)
    # identical members: zero variance
    assert prediction_variance(np.stack([out[0]] * 3)) == pytest.approx(0.0, abs=1e-12)
    # bias^2 against one-hot labels, by hand for one sample
    y = g.integers(0, 5, size=30)
    onehot = np.eye(5)[y]
    assert prediction_bias2(out, y) == pytest.approx(((out.mean(0) - onehot) ** 2).sum(-1).mean())


def test_ensemble_metrics_mean_softmax():
    res = ensemble_metrics(OUT, Y)
    p = np.exp(OUT) / np.exp(OUT).sum(-1, keepdims=True)
    ens = p.mean(0)
    assert res["ensemble_accuracy"] == pytest.approx(np.mean(ens.argmax(-1) == Y))
    assert res["ensemble_nll"] == pytest.approx(-np.mean(np.log(ens[np.arange(5), Y])))
    np.testing.assert_allclose(res["member_nll"], -np.log(p[:, np.arange(5), Y]).mean(-1))
    assert res["member_accuracy"] == pytest.approx([0.8, 0.4, 0.6])
    assert res["der"] == pytest.approx(disagreement_error_ratio(OUT, Y))
    assert res["n_members"] == 3 and res["n_samples"] == 5
    import json

    json.dumps(res)  # plain types only


def test_bad_input():
    with pytest.raises(ConfigError, match="same shape"):
        disagreement(OUT[0], OUT[1][:4])
    with pytest.raises(ConfigError, match="one shape"):
        disagreement_matrix([OUT[0], OUT[1][:4]])
    with pytest.raises(ConfigError, match="labels has 4 entries.*5 samples"):
        errors(OUT, Y[:4])
    with pytest.raises(ConfigError, match="at least 2 members"):
        prediction_variance(OUT[:1])
    with pytest.raises(ConfigError, match="at least 2 members"):
        disagreement_error_ratio(OUT[:1], Y)
    with pytest.raises(ConfigError, match="integer"):
        errors(OUT, Y + 0.5)
    with pytest.raises(ConfigError, match="out of range"):
        ensemble_metrics(OUT, np.array([0, 1, 2, 3, 1]))
    with pytest.raises(ConfigError, match="NaN"):
        prediction_variance(np.full((2, 3, 3), np.nan))


def test_collect_outputs_from_real_models_on_digits():
    """Three MLPs trained from different seeds on sklearn digits: an ensemble that disagrees somewhat."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    members = []
    for seed in (13, 17, 27):  # SharpBalance's member seeds
        g = torch.Generator().manual_seed(seed)
        m = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        params = list(m.parameters())
        for _ in range(60):
            grads = torch.autograd.grad(nn.functional.cross_entropy(m(x[:1200]), y[:1200]), params)
            with torch.no_grad():
                for p, gr in zip(params, grads, strict=True):
                    p -= 0.5 * gr
        members.append(m)
    test = [(x[i:i + 100], y[i:i + 100]) for i in range(1200, 1797, 100)]
    outs, labels = collect_outputs(members, test)
    assert outs.shape == (3, 597, 10) and labels.shape == (597,)
    np.testing.assert_array_equal(labels, y[1200:].numpy())
    res = ensemble_metrics(outs, labels)
    assert min(res["member_accuracy"]) > 0.7
    assert 0 < res["disagreement"] < 0.3
    assert res["der"] > 0 and res["prediction_variance"] > 0
    assert res["ensemble_nll"] < np.mean(res["member_nll"])  # averaging probabilities helps NLL
    with pytest.raises(ConfigError, match="no labels"):
        collect_outputs(members, [x[:10]])
    outs2, none = collect_outputs(members, [x[:10]], with_labels=False)
    assert none is None and outs2.shape == (3, 10, 10)
