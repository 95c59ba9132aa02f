"""APGD worst-case sharpness (analytic quadratic, radius, random baseline, flat point, seeds) and
per-sample gradient norms (vmap vs a loop over single examples)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.landscape.objective import LandscapeError
from htsr.landscape.persample import per_sample_grad_norms
from htsr.landscape.sharpness import (
    adaptive_scale,
    average_sharpness,
    checkpoints,
    perturbation_norm,
    project_perturbation,
    random_perturbation,
    sharpness_table,
    worst_case_sharpness,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float64), torch.tensor(y)


@pytest.fixture(scope="module")
def trained(digits):
    """A small MLP trained briefly on sklearn digits (float64; a zero bias entry exercises the 0/0 fix)."""
    x, y = digits
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.2)
    params = list(model.parameters())
    for _ in range(150):  # plain gradient descent (no torch.optim: its first use imports torch._dynamo, slow)
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x[:600]), y[:600]), params)
        with torch.no_grad():
            for p, g_ in zip(params, grads, strict=True):
                p -= 0.5 * g_
    with torch.no_grad():
        model[2].bias[0] = 0.0
    return model.eval()


def _batches(digits, n=6, bs=5, start=600):
    x, y = digits
    return [(x[start + i * bs:start + (i + 1) * bs], y[start + i * bs:start + (i + 1) * bs]) for i in range(n)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ geometry
def test_checkpoint_schedule_matches_reference():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 times 20, rounded up; in the reference's float
    # arithmetic 0.70 * 20 = 14.000000000000002, so its checkpoint is 15, not 14: kept for fidelity
    assert checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]
    assert checkpoints(100)[:2] == [22, 41]


@pytest.mark.parametrize("p", [2, "inf"])
def test_projection_is_feasible_and_nearest(p):
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(50, generator=g, dtype=torch.float64)
    theta[3] = 0.0
    scale = adaptive_scale(theta, True)
    rho = 0.3
    d = torch.randn(50, generator=g, dtype=torch.float64)
    proj = project_perturbation(d, scale, rho, p)
    assert perturbation_norm(proj, scale, p) <= rho * (1 + 1e-9)
    assert proj[3] == 0.0
    # nearest point: no other feasible point is closer to d
    for _ in range(200):
        other = random_perturbation(scale, rho, p, generator=g, on_boundary=True) * torch.rand(1, generator=g,
                                                                                           dtype=torch.float64)
        assert perturbation_norm(other, scale, p) <= rho * (1 + 1e-9)
        assert torch.linalg.vector_norm(d - proj) <= torch.linalg.vector_norm(d - other) + 1e-12
    # a point already inside is left alone
    inside = proj * 0.5
    assert torch.allclose(project_perturbation(inside, scale, rho, p), inside)


# ------------------------------------------------------------------------------------------ APGD
def test_quadratic_worst_case_is_found_analytically():
    """MSE linear regression at its least-squares solution: L(w + d) - L(w) = ||X d||^2 / n, so the worst
    case over ||d||_2 <= rho is rho^2 sigma_max(X)^2 / n (top right-singular vector)."""
    g = torch.Generator().manual_seed(2)
    n, d = 40, 6
    u = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    x = u @ torch.diag(torch.tensor([9.0, 5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ v.T
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64) + 0.1 * torch.randn(n, 1, generator=g,
                                                                                   dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    rho = 0.2
    exact = rho**2 * float(torch.linalg.matrix_norm(x, 2)) ** 2 / n
    r = worst_case_sharpness(model, (x, y), rho=rho, p=2, adaptive=False, n_iters=20)
    assert exact * 0.99 <= r.sharpness <= exact * (1 + 1e-9)
    assert r.per_batch["delta_norm"].iloc[0] == pytest.approx(rho, rel=1e-9)  # on the sphere
    # Linf: worst case over the box |d_i| <= rho is max_{s in {+-1}^d} ||X s||^2 rho^2 / n (brute force)
    signs = torch.tensor(np.array(np.meshgrid(*[[-1.0, 1.0]] * d)).reshape(d, -1).T, dtype=torch.float64)
    exact_inf = float(((x @ signs.T) ** 2).sum(0).max()) * rho**2 / n
    # (a convex maximisation over a box has local vertex optima, and at an exact minimum the first sign step
    # follows round-off; random restarts, seeded, find the global one here)
    r_inf = worst_case_sharpness(model, (x, y), rho=rho, p="inf", adaptive=False, init="random", n_restarts=4)
    assert exact_inf * 0.99 <= r_inf.sharpness <= exact_inf * (1 + 1e-9)
    assert r_inf.sharpness > 2 * float(((x @ signs.T) ** 2).sum(0).mean()) * rho**2 / n  # >> a random corner


@pytest.mark.parametrize("p", [2, "inf"])
@pytest.mark.parametrize("rule", ["apgd", "reference"])
def test_respects_radius_and_beats_random(trained, digits, p, rule):
    batches = _batches(digits)
    before = _state(trained)
    rho = 0.05
    r = worst_case_sharpness(trained, batches, rho=rho, p=p, adaptive=True, momentum_rule=rule)
    assert r.n_batches == 6 and len(r.per_batch) == 6
    assert (r.per_batch["delta_norm"] <= rho * (1 + 1e-9)).all()
    assert (r.per_batch["sharpness"] >= 0).all() and r.sharpness > 0
    # >= the loss increase of random perturbations on the boundary of the same set, batch by batch
    from htsr.landscape.objective import Objective

    gen = torch.Generator().manual_seed(5)
    for i, b in enumerate(batches):
        obj = Objective(trained, b)
        theta = obj.get_vector()
        scale = adaptive_scale(theta, True)
        base = obj.loss(theta)
        rand = max(obj.loss(theta + random_perturbation(scale, rho, p, generator=gen, on_boundary=True)) - base
                   for _ in range(10))
        assert r.per_batch["sharpness"].iloc[i] >= rand
    # the average over random points is far below the worst case
    assert average_sharpness(trained, batches, rho=rho, p=p, n_samples=5, on_boundary=True) < 0.5 * r.sharpness
    # the model is untouched: weights, buffers, mode
    after = _state(trained)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not trained.training


def test_non_adaptive_radius_and_error_increase(trained, digits):
    r = worst_case_sharpness(trained, _batches(digits, n=3), rho=0.5, p=2, adaptive=False)
    assert (r.per_batch["delta_l2"] <= 0.5 * (1 + 1e-9)).all()
    assert r.per_batch["delta_norm"].equals(r.per_batch["delta_l2"])
    assert "error_increase" in r.per_batch and np.isfinite(r.error_increase)
    d = r.as_dict()
    assert d["p"] == 2 and len(d["per_batch"]) == 3


def test_zero_at_a_flat_point():
    """All ReLUs dead with a margin: the loss is constant in a neighbourhood, so the sharpness is 0."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[0].bias.fill_(-10.0)
        model[2].weight.fill_(0.3)
        model[2].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    # only the first layer is perturbed: every hidden unit stays dead inside the adaptive ball
    r = worst_case_sharpness(model, (x, y), rho=0.1, p="inf", params=["0.*"])
    assert abs(r.sharpness) < 1e-12
    # the whole model: only the output bias matters (a flat-ish point is not flat there)
    r_all = worst_case_sharpness(model, (x, y), rho=0.1, p="inf")
    assert r_all.sharpness > 1e-3


def test_seeds_reproduce_exactly(trained, digits):
    batches = _batches(digits, n=3)
    kw = dict(rho=0.05, p=2, init="random", n_restarts=2, n_iters=10)
    a = worst_case_sharpness(trained, batches, seed=7, **kw)
    b = worst_case_sharpness(trained, batches, seed=7, **kw)
    c = worst_case_sharpness(trained, batches, seed=8, **kw)
    assert a.per_batch.equals(b.per_batch)
    assert not a.per_batch["delta_l2"].equals(c.per_batch["delta_l2"])


def test_table_over_norms_and_radii(trained, digits):
    t = sharpness_table(trained, _batches(digits, n=2), rhos=[0.01, 0.05], ps=(2, "inf"), n_iters=10)
    assert list(t["p"]) == ["2", "2", "inf", "inf"]
    assert t["sharpness"].iloc[1] > t["sharpness"].iloc[0]  # larger radius, larger worst case
    with pytest.raises(ConfigError, match="rhos"):
        sharpness_table(trained, _batches(digits, n=1), rhos="0.5")  # the reference's --gamma string bug


def test_bad_input(trained, digits):
    b = _batches(digits, n=1)
    with pytest.raises(ConfigError, match="p must be 2 or 'inf'"):
        worst_case_sharpness(trained, b, p=1)
    with pytest.raises(ConfigError, match="rho"):
        worst_case_sharpness(trained, b, rho=0)
    with pytest.raises(ConfigError, match="init='random'"):
        worst_case_sharpness(trained, b, n_restarts=3)
    with pytest.raises(LandscapeError, match="scalar"):
        worst_case_sharpness(trained, b, lambda m, bb: nn.functional.cross_entropy(m(bb[0]), bb[1],
                                                                                   reduction="none"))
    with pytest.raises(LandscapeError, match="no batch"):
        worst_case_sharpness(trained, [])
    with pytest.raises(LandscapeError, match="mask names"):
        worst_case_sharpness(trained, b, mask={"nope": torch.ones(1)})


def test_mask_keeps_pruned_weights_unperturbed(trained, digits):
    """Non-adaptive p=inf would move every weight; a mask (SB's sparse models) pins pruned ones."""
    w = trained[0].weight
    mask = {"0.weight": (torch.arange(w.numel()).reshape(w.shape) % 2).double()}
    r = worst_case_sharpness(trained, _batches(digits, n=2), rho=0.01, p="inf", adaptive=False, mask=mask)
    assert r.sharpness > 0
    # evaluate the masked-only objective: a mask of zeros everywhere gives exactly zero sharpness
    zeros = {n: torch.zeros_like(p) for n, p in trained.named_parameters()}
    r0 = worst_case_sharpness(trained, _batches(digits, n=2), rho=0.01, p="inf", adaptive=False, mask=zeros)
    assert r0.sharpness == 0.0


# ------------------------------------------------------------------------------------------ per-sample
def test_per_sample_grad_norms_equal_loop_over_single_examples(trained, digits):
    x, y = digits
    xs, ys = x[:37], y[:37]
    # the oracle: an explicit loop, one example at a time, written here
    want = []
    for i in range(37):
        trained.zero_grad()
        nn.functional.cross_entropy(trained(xs[i:i + 1]), ys[i:i + 1]).backward()
        want.append(sum(float((p.grad**2).sum()) for p in trained.parameters()))
        trained.zero_grad()
    want = np.array(want)
    got = per_sample_grad_norms(trained, (xs, ys), batch_size=16)
    assert got.shape == (37,)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(per_sample_grad_norms(trained, (xs, ys), method="loop"), want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(per_sample_grad_norms(trained, (xs, ys), squared=False), np.sqrt(want), rtol=1e-10)
    # an iterable of batches gives the same numbers in the same order
    loader = [(xs[i:i + 10], ys[i:i + 10]) for i in range(0, 37, 10)]
    np.testing.assert_allclose(per_sample_grad_norms(trained, loader), want, rtol=1e-10, atol=1e-14)
    # the mean over a batch is not the same thing: the score is per sample
    assert np.std(want) > 0.1 * np.mean(want)


def test_per_sample_with_batchnorm_eval_mode_and_mask(digits):
    x, y = digits
    torch.manual_seed(1)  # test-owned init
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)).double()
    model.train()
    with torch.no_grad():
        model(x[:200])  # non-trivial running stats
    before = _state(model)
    mask = {"0.weight": torch.zeros(16, 64, dtype=torch.float64)}
    got = per_sample_grad_norms(model, (x[:12], y[:12]), mask=mask)
    loop = per_sample_grad_norms(model, (x[:12], y[:12]), mask=mask, method="loop")
    np.testing.assert_allclose(got, loop, rtol=1e-10)
    only_first = per_sample_grad_norms(model, (x[:12], y[:12]), params=["0.weight"], mask=mask)
    assert np.all(only_first == 0.0)
    assert model.training  # mode restored
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_per_sample_bad_input(trained, digits):
    x, y = digits
    with pytest.raises(ConfigError, match="12 samples but targets have 11"):
        per_sample_grad_norms(trained, (x[:12], y[:11]))
    with pytest.raises(LandscapeError, match="scalar"):
        per_sample_grad_norms(trained, (x[:4], y[:4]),
                              loss_fn=lambda o, t: nn.functional.cross_entropy(o, t, reduction="none"))
    with pytest.raises(ConfigError, match="method"):
        per_sample_grad_norms(trained, (x[:4], y[:4]), method="jacobian")


def test_overflowing_radius_is_a_status_not_a_number(trained, digits):
    from htsr.landscape.objective import NonFiniteLossError

    b = _batches(digits, n=2)
    before = [p.detach().clone() for p in trained.parameters()]
    r = worst_case_sharpness(trained, b, rho=1e200, n_iters=3)  # |theta| * 1e200 overflows two layers deep
    assert r.status == "failed" and "not finite" in r.reason and "rho=1e+200" in r.reason
    assert np.isnan(r.sharpness) and np.isnan(r.max_delta_l2) and np.isnan(r.error_increase)
    assert set(r.per_batch["status"]) == {"failed"}
    t = sharpness_table(trained, b, rhos=[0.01, 1e200], ps=(2,), n_iters=3)
    assert list(t["status"]) == ["ok", "failed"] and t["reason"].iloc[0] == ""
    assert t["sharpness"].iloc[0] > 0 and np.isnan(t["sharpness"].iloc[1])
    with pytest.raises(NonFiniteLossError, match="not finite"):
        average_sharpness(trained, b, rho=1e200, n_samples=2)
    assert all(torch.equal(x, y) for x, y in zip(before, trained.parameters(), strict=True))  # weights restored


def test_torch_criterion_as_loss_fn(trained, digits):
    b = _batches(digits, n=2)
    a = worst_case_sharpness(trained, b, rho=0.05, n_iters=5)
    c = worst_case_sharpness(trained, b, nn.CrossEntropyLoss(), rho=0.05, n_iters=5)
    f = worst_case_sharpness(trained, b, nn.functional.cross_entropy, rho=0.05, n_iters=5)
    assert c.sharpness == pytest.approx(a.sharpness, rel=1e-12) and f.sharpness == pytest.approx(a.sharpness,
                                                                                                 rel=1e-12)
