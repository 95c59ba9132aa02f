"""SAM / ASAM optimizer wrappers: analytic steps on a quadratic, state dicts, the shared training loop."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.landscape.sam import ASAM, SAM, SAMStateError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)
B = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
W0 = torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64)


def quad(w: torch.Tensor) -> torch.Tensor:
    """L(w) = 1/2 w'Aw - b'w, gradient A w - b."""
    return 0.5 * w @ A @ w - B @ w


def grad(w: torch.Tensor) -> torch.Tensor:
    return A @ w - B


def _closure(opt, w):
    def closure():
        opt.zero_grad()
        loss = quad(w)
        loss.backward()
        return loss.detach()

    return closure


def test_sam_step_on_quadratic_matches_hand_computation():
    rho, lr = 0.1, 0.05
    w = nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.SGD, rho=rho, lr=lr)
    assert SAM.needs_closure is True
    closure = _closure(opt, w)
    closure()  # the loop's first forward/backward: gradient at w in .grad
    opt.step(closure)
    g = grad(W0)
    e = rho * g / g.norm()
    expected = W0 - lr * grad(W0 + e)
    assert torch.allclose(w.detach(), expected, atol=1e-12)
    # rho = 0 is plain gradient descent
    w2 = nn.Parameter(W0.clone())
    opt2 = SAM([w2], torch.optim.SGD, rho=0.0, lr=lr)
    _closure(opt2, w2)()
    opt2.step(_closure(opt2, w2))
    assert torch.allclose(w2.detach(), W0 - lr * grad(W0), atol=1e-12)
    assert not torch.allclose(w2.detach(), expected, atol=1e-4)


def test_manual_first_second_step_like_sam_package():
    rho, lr = 0.2, 0.1
    w = nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.SGD, rho=rho, lr=lr)
    quad(w).backward()
    opt.first_step(zero_grad=True)
    g = grad(W0)
    assert torch.allclose(w.detach(), W0 + rho * g / g.norm(), atol=1e-12)  # at w + e(w)
    quad(w).backward()
    opt.second_step(zero_grad=True)
    assert w.grad is None
    assert torch.allclose(w.detach(), W0 - lr * grad(W0 + rho * g / g.norm()), atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_asam_step_on_quadratic_matches_hand_computation(eta):
    rho, lr = 0.5, 0.05
    w = nn.Parameter(W0.clone())
    opt = ASAM([w], torch.optim.SGD, rho=rho, eta=eta, lr=lr)
    closure = _closure(opt, w)
    closure()
    opt.step(closure)
    g = grad(W0)
    t = W0.abs() + eta
    e = rho * t * t * g / torch.linalg.vector_norm(t * g)
    expected = W0 - lr * grad(W0 + e)
    assert torch.allclose(w.detach(), expected, atol=1e-12)
    # the adaptive step differs from plain SAM's
    plain = W0 - lr * grad(W0 + rho * g / g.norm())
    assert not torch.allclose(expected, plain, atol=1e-3)


def test_wrap_instance_adam_and_per_group_rho():
    w1, w2 = nn.Parameter(W0[:2].clone()), nn.Parameter(W0[2:].clone())
    base = torch.optim.SGD([{"params": [w1], "rho": 0.3}, {"params": [w2]}], lr=0.1)
    opt = SAM(base, rho=0.1)
    assert opt.param_groups is base.param_groups
    assert [g["rho"] for g in opt.param_groups] == [0.3, 0.1]

    def closure():
        opt.zero_grad()
        loss = quad(torch.cat([w1, w2]))
        loss.backward()
        return loss

    closure()
    opt.step(closure)
    g = grad(W0)
    n = g.norm()
    e = torch.cat([0.3 * g[:2] / n, 0.1 * g[2:] / n])
    assert torch.allclose(torch.cat([w1, w2]).detach(), W0 - 0.1 * grad(W0 + e), atol=1e-12)
    # any base optimizer: Adam moments live in the base optimizer's state
    w = nn.Parameter(W0.clone())
    adam = SAM([w], torch.optim.Adam, rho=0.05, lr=1e-2)
    c = _closure(adam, w)
    c()
    adam.step(c)
    assert "exp_avg" in adam.base_optimizer.state[w]


def test_state_dict_roundtrip_keeps_momentum_and_continues_identically():
    def make(w):
        return SAM([w], torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9)

    w = nn.Parameter(W0.clone())
    opt = make(w)
    for _ in range(3):
        c = _closure(opt, w)
        c()
        opt.step(c)
    sd = opt.state_dict()
    assert "momentum_buffer" in sd["state"][0]  # the vendored reference lost this
    assert sd["param_groups"][0]["rho"] == 0.1
    w_copy = nn.Parameter(w.detach().clone())
    w_before = w.detach().clone()
    opt2 = make(w_copy)
    opt2.load_state_dict(copy.deepcopy(sd))
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    for o, p in ((opt, w), (opt2, w_copy)):
        c = _closure(o, p)
        c()
        o.step(c)
    assert torch.equal(w.detach(), w_copy.detach())
    # without the momentum state the same step lands elsewhere: the round trip carried something
    w3 = nn.Parameter(w_before.clone())
    fresh = make(w3)
    c = _closure(fresh, w3)
    c()
    fresh.step(c)
    assert not torch.allclose(w3.detach(), w_copy.detach(), atol=1e-6)


def test_parameter_without_second_gradient_is_restored():
    """The reference skipped params whose grad was None in second_step, leaving them at w + e(w)."""
    u = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    v = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    opt = SAM([u, v], torch.optim.SGD, rho=0.5, lr=0.1)
    ((u**2).sum() + (v**2).sum()).backward()
    opt.first_step(zero_grad=True)
    assert not torch.equal(v.detach(), torch.tensor([0.5], dtype=torch.float64))
    (u**2).sum().backward()  # v unused in the second pass
    opt.second_step(zero_grad=True)
    assert torch.equal(v.detach(), torch.tensor([0.5], dtype=torch.float64))


def test_errors_and_order_checks():
    w = nn.Parameter(W0.clone())
    with pytest.raises(ConfigError, match="rho"):
        SAM([w], torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ConfigError, match="eta"):
        ASAM([w], torch.optim.SGD, eta=-1, lr=0.1)
    with pytest.raises(ConfigError, match="base optimizer"):
        SAM([w])
    with pytest.raises(ConfigError, match="already built"):
        SAM([w], torch.optim.SGD([w], lr=0.1))
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.1)
    with pytest.raises(SAMStateError, match="closure"):
        opt.step()
    with pytest.raises(SAMStateError, match="without first_step"):
        opt.second_step()
    with pytest.raises(SAMStateError, match="no parameter has a gradient"):
        opt.first_step()
    quad(w).backward()
    opt.first_step()
    with pytest.raises(SAMStateError, match="twice"):
        opt.first_step()
    with pytest.raises(SAMStateError, match="perturbed"):
        opt.state_dict()
    opt.second_step()


def test_failing_closure_leaves_weights_unperturbed():
    w = nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.SGD, rho=0.3, lr=0.1)
    quad(w).backward()

    def bad():
        raise RuntimeError("data error")

    with pytest.raises(RuntimeError, match="data error"):
        opt.step(bad)
    assert torch.equal(w.detach(), W0)
    quad(w).backward()
    opt.first_step()  # usable again
    opt.second_step()


def test_step_computes_missing_gradient_itself():
    w = nn.Parameter(W0.clone())
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.05)
    opt.step(_closure(opt, w))  # no prior backward
    g = grad(W0)
    assert torch.allclose(w.detach(), W0 - 0.05 * grad(W0 + 0.1 * g / g.norm()), atol=1e-12)


def test_bn_running_stats_untouched_by_perturbed_pass():
    torch.manual_seed(0)  # test-owned init
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, bn_model=model)
    nn.functional.cross_entropy(model(x), y).backward()
    after_first = model[1].running_mean.clone(), int(model[1].num_batches_tracked)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.equal(model[1].running_mean, after_first[0])
    assert int(model[1].num_batches_tracked) == after_first[1]


def test_with_shared_training_loop_and_scheduler_on_digits():
    """htsr.training.train drives SAM through step(closure); same result as the manual two-pass loop."""
    from sklearn.datasets import load_digits

    from htsr.training import train

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:320] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[:320])
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 320, 32)]

    def make():
        torch.manual_seed(3)  # identical init for both runs
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    m1 = make()
    opt1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt1, step_size=2, gamma=0.5)
    res = train(m1, batches, opt1, epochs=4, scheduler=sched, progress=False)
    hist = res.history
    assert hist["train_loss"].iloc[-1] < 0.7 * hist["train_loss"].iloc[0]
    assert opt1.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)

    m2 = make()
    opt2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    for _ in range(4):
        m2.train()
        for xb, yb in batches:
            opt2.zero_grad()
            nn.functional.cross_entropy(m2(xb), yb).backward()
            opt2.first_step(zero_grad=True)
            nn.functional.cross_entropy(m2(xb), yb).backward()
            opt2.second_step(zero_grad=True)
        sched2.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.allclose(p1, p2, atol=1e-6)
