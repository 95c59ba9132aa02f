"""The loss-landscape, training, TempBalance and memorization code on CUDA agrees with the CPU (skipped without a
GPU). Every check runs the same seeded model on both devices in float64 (TF32 off) and compares the numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tests.digits_helpers import digits, fit_sgd, small_cnn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def pair():
    """A trained float64 digits CNN on the CPU and its copy on CUDA, with a batch on each device."""
    x, y = digits(torch.float64)
    cpu = fit_sgd(small_cnn(0).double(), x[:1000], y[:1000], steps=30).eval()
    gpu = copy.deepcopy(cpu).cuda()
    b = (x[1000:1200], y[1000:1200])
    return cpu, gpu, b, (b[0].cuda(), b[1].cuda())


def test_hessian_eigenvalue_and_trace_match(pair):
    from htsr.landscape.hessian import hessian_trace, top_eigenvalues
    from htsr.landscape.objective import Objective

    cpu, gpu, bc, bg = pair
    oc, og = Objective(cpu, bc), Objective(gpu, bg)
    v = torch.randn(oc.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(og.hvp(v.cuda()).cpu(), oc.hvp(v), rtol=1e-9, atol=1e-11)
    ec = top_eigenvalues(oc, 2, tol=1e-10, max_iter=200)
    eg = top_eigenvalues(og, 2, tol=1e-10, max_iter=200)
    np.testing.assert_allclose(eg.eigenvalues, ec.eigenvalues, rtol=1e-7)
    # the exact trace from unit vectors on both devices, and Hutch++ on the GPU within its error
    exact = sum(float(oc.hvp(torch.eye(oc.dim, dtype=torch.float64)[i:i + 128])
                      .mul(torch.eye(oc.dim, dtype=torch.float64)[i:i + 128]).sum()) for i in range(0, oc.dim, 128))
    tg = hessian_trace(og, method="hutch++", num_matvecs=300, seed=0)
    assert abs(tg.trace - exact) < 0.05 * abs(exact)


def test_loss_line_between_models_matches(pair):
    from htsr.landscape.objective import Objective
    from htsr.landscape.surfaces import line_between

    cpu, gpu, bc, bg = pair
    x, y = digits(torch.float64)
    other = fit_sgd(small_cnn(1).double(), x[:1000], y[:1000], steps=30).eval()
    sc = line_between(Objective(cpu, bc), other, np.linspace(0, 1, 7))
    sg = line_between(Objective(gpu, bg), copy.deepcopy(other).cuda(), np.linspace(0, 1, 7))
    np.testing.assert_allclose(sg.loss, sc.loss, rtol=1e-9)
    np.testing.assert_allclose(sg.error, sc.error)
    assert sg.loss[0] < sg.loss.max()  # a real barrier or at least a changing loss, not a constant


def test_per_sample_scores_and_worst_case_sharpness_match(pair):
    from htsr.landscape.persample import per_sample_grad_norms
    from htsr.landscape.sharpness import worst_case_sharpness

    cpu, gpu, bc, bg = pair
    for method in ("vmap", "loop"):
        pc = per_sample_grad_norms(cpu, (bc[0][:40], bc[1][:40]), method=method)
        pg = per_sample_grad_norms(gpu, (bg[0][:40], bg[1][:40]), method=method)
        np.testing.assert_allclose(pg, pc, rtol=1e-8)
    rc = worst_case_sharpness(cpu, bc, rho=0.05, n_iters=5, progress=False)
    rg = worst_case_sharpness(gpu, bg, rho=0.05, n_iters=5, progress=False)
    assert rc.sharpness > 0
    assert rg.sharpness == pytest.approx(rc.sharpness, rel=1e-6)


def test_cka_between_models_matches(pair):
    from htsr.landscape.cka import compare_models

    cpu, gpu, bc, bg = pair
    x, y = digits(torch.float64)
    other = fit_sgd(small_cnn(1).double(), x[:1000], y[:1000], steps=30).eval()
    layers = ["2", "5", None]
    dc = [(bc[0][i:i + 50], bc[1][i:i + 50]) for i in range(0, 200, 50)]
    dg = [(bg[0][i:i + 50], bg[1][i:i + 50]) for i in range(0, 200, 50)]
    for est in ("minibatch", "debiased"):
        kc = compare_models(cpu, other, dc, layers_a=layers, estimator=est, progress=False)
        kg = compare_models(gpu, copy.deepcopy(other).cuda(), dg, layers_a=layers, estimator=est, progress=False)
        np.testing.assert_allclose(kg.to_numpy(), kc.to_numpy(), rtol=1e-8, atol=1e-10)


def test_sam_training_on_the_shared_loop_matches():
    from htsr.landscape.sam import SAM
    from htsr.training import train

    x, y = digits(torch.float64)
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 500, 50)]
    out = {}
    for dev in ("cpu", "cuda"):
        m = small_cnn(3).double().to(dev)
        opt = SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9, bn_model=m)
        res = train(m, batches, opt, epochs=2, device=dev, progress=False)
        assert next(m.parameters()).device.type == dev
        out[dev] = (res.history["train_loss"].to_numpy(), [p.detach().cpu() for p in m.parameters()])
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], rtol=1e-7)
    for a, b in zip(out["cuda"][1], out["cpu"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_tempbalance_on_cuda_sets_the_same_rates():
    from htsr.tempbalance.scheduler import TempBalance

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128),
                         nn.ReLU(), nn.Linear(128, 10))
    rates = {}
    for dev in ("cpu", "cuda"):
        m = copy.deepcopy(base).to(dev)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        tb = TempBalance(m, opt)
        assert all(p.device.type == dev for g in opt.param_groups for p in g["params"])
        rates[dev] = sorted((g.get("name", str(i)), g["lr"]) for i, g in enumerate(opt.param_groups))
        del tb
    assert [n for n, _ in rates["cuda"]] == [n for n, _ in rates["cpu"]]
    np.testing.assert_allclose([r for _, r in rates["cuda"]], [r for _, r in rates["cpu"]], rtol=1e-4)
    assert len({round(r, 8) for _, r in rates["cpu"]}) > 1  # layers really get different rates


@pytest.mark.parametrize("method", ["activations", "slimming", "hard_concrete", "durable", "second_order",
                                    "subnet", "balanced_subnet"])
def test_unlearning_runs_on_cuda(method):
    from htsr.memorization.metrics import greedy_generate
    from htsr.memorization.testbed import make_model
    from htsr.memorization.unlearning import unlearn

    g = torch.Generator().manual_seed(0)
    forget, retain = torch.randint(0, 14, (6, 16), generator=g), torch.randint(0, 14, (24, 16), generator=g)
    cpu = make_model(2, max_ctx=16, n_embd=32, n_head=2, seed=0).eval()
    gpu = copy.deepcopy(cpu).cuda()
    assert torch.equal(greedy_generate(gpu, forget[:, :6], 10), greedy_generate(cpu, forget[:, :6], 10))
    before = {k: v.clone() for k, v in gpu.state_dict().items()}
    hp = {"epochs": 2} if method in ("slimming", "hard_concrete", "subnet", "balanced_subnet") else {}
    hp.update({"num_grads": 8} if method == "second_order" else {})
    hp.update({"prompt_len": 6} if method == "activations" else {})
    rep = unlearn(gpu, method, forget.cuda(), retain.cuda(), ratio=0.1, seed=0, **hp)
    assert rep.n_changed > 0
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    changed = [k for k, v in gpu.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
