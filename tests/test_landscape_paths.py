"""Mode connectivity: the mc / peak metrics, linear paths, Bezier curves trained with the shared loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from htsr.landscape.objective import LandscapeError, NonFiniteLossError, Objective
from htsr.landscape.paths import (
    BezierCurve,
    evaluate_curve,
    garipov_lr_factor,
    linear_path,
    mode_connectivity,
    mode_connectivity_peak,
    train_bezier,
)
from tests.digits_helpers import digits, small_cnn

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


def _loader(n: int = 600, bs: int = 100, seed: int = 0, shuffle: bool = True):
    x, y = digits()
    ds = torch.utils.data.TensorDataset(x[:n], y[:n])
    return torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def endpoints():
    from htsr.training import train

    out = []
    for s in (0, 1):
        m = small_cnn(s)
        train(m, _loader(seed=s), torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), epochs=3, progress=False)
        out.append(m.eval())
    return out


def test_mode_connectivity_definition():
    # barrier in the middle: mc = mean of ends - peak
    assert mode_connectivity([0.1, 0.3, 0.5, 0.3, 0.1]) == pytest.approx(0.1 - 0.5)
    # a valley (curve better than the ends) gives mc > 0
    assert mode_connectivity([0.2, 0.1, 0.2]) == pytest.approx(0.1)
    # t* is the largest |deviation|, endpoints included (monotone path: an endpoint)
    assert mode_connectivity([0.0, 0.1, 0.2]) == pytest.approx(0.1 - 0.0)
    assert mode_connectivity([0.3, 0.3, 0.3]) == 0.0
    assert mode_connectivity_peak([0, .25, .5, .75, 1], [0.01, 0.02, 0.05, 0.03, 0.01]) == pytest.approx(-5.0)
    assert mode_connectivity_peak([0, .25, .5, .75, 1], [1, 2, 5, 3, 1], percent=False) == -5.0
    with pytest.raises(LandscapeError, match="t=0.25"):
        mode_connectivity_peak([0, 0.5, 1], [0, 0.1, 0])
    with pytest.raises(LandscapeError, match="finite"):
        mode_connectivity([0.1, float("nan"), 0.1])
    assert [garipov_lr_factor(e, 10) for e in (0, 5, 7, 9)] == pytest.approx([1, 1, 1 - 0.5 * 0.99, 0.01])


def test_linear_path_to_itself_has_mc_zero(endpoints):
    a, _ = endpoints
    data = _loader(300, shuffle=False)  # the same batches at every t: BN statistics identical to the last bit
    r = linear_path(a, a, data, num_points=5)
    assert r.metrics()["mode_connectivity"] == 0.0
    assert r.metrics()["mode_connectivity_loss"] == 0.0
    assert np.all(r.error == r.error[0])


def test_linear_path_between_two_models(endpoints):
    a, b = endpoints
    data = _loader(300, shuffle=False)
    w0 = a[0].weight.detach().clone()
    r = linear_path(a, b, data, num_points=5, bn_data=None)
    # without re-estimation every point uses a's BatchNorm statistics: t=0 is model a itself
    assert r.loss[0] == pytest.approx(Objective(a, data).loss(), rel=1e-5)
    rb = linear_path(a, b, data, num_points=5)
    assert rb.meta["bn_reestimated"] and rb.loss[2] < r.loss[2]  # BN re-estimation lowers the midpoint barrier
    m = rb.metrics()
    assert m["mode_connectivity"] < 0  # two independently trained CNNs: a barrier
    assert m["mode_connectivity"] == pytest.approx(0.5 * (rb.error[0] + rb.error[-1]) - rb.error.max())
    assert m["mode_connectivity_peak"] == pytest.approx(-100 * max(rb.error[1:4]))
    # inputs untouched
    assert a.training is False and torch.equal(a[0].weight, w0)


def test_bezier_curve_endpoints_and_init(endpoints):
    a, b = endpoints
    c = BezierCurve(a, b)
    pa, pb = [p.detach() for p in a.parameters()], [p.detach() for p in b.parameters()]
    assert all(torch.equal(x, y) for x, y in zip(c.point(0.0), pa, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(c.point(1.0), pb, strict=True))
    assert all(torch.allclose(x, 0.5 * (y + z)) for x, y, z in zip(c.point(0.5), pa, pb, strict=True))  # linear init
    assert [n for n, p in c.named_parameters() if p.requires_grad] == [f"bend.{i}" for i in range(len(pa))]
    with pytest.raises(LandscapeError, match="different architectures"):
        BezierCurve(a, nn.Sequential(nn.Conv2d(1, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(45, 10)))
    with pytest.raises(LandscapeError, match="different architectures"):
        linear_path(a, nn.Linear(3, 2), _loader(100))


def test_bezier_training_finds_a_lower_path_and_is_seeded(endpoints):
    a, b = endpoints
    data = _loader(600)
    curve, res = train_bezier(a, b, data, epochs=4, seed=3, progress=False)
    assert len(res.history) == 4 and res.history["lr"].iloc[-1] < res.history["lr"].iloc[0]
    ev = evaluate_curve(curve, _loader(300), num_points=5)
    lin = linear_path(a, b, _loader(300), num_points=5)
    assert ev.error[2] < lin.error[2] and ev.loss[2] < lin.loss[2]
    assert ev.metrics()["mode_connectivity"] > lin.metrics()["mode_connectivity"]
    assert ev.metrics()["mode_connectivity_peak"] > lin.metrics()["mode_connectivity_peak"]
    # endpoints stay fixed
    assert torch.equal(curve.point(0.0)[0], a[0].weight.detach())
    curve2, _ = train_bezier(a, b, _loader(600), epochs=4, seed=3, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(curve.bend, curve2.bend, strict=True))
    # the data order is the DataLoader's (seeded); t draws come from the curve's seed
    curve3, _ = train_bezier(a, b, _loader(600), epochs=1, seed=4, progress=False)
    curve4, _ = train_bezier(a, b, _loader(600), epochs=1, seed=3, progress=False)
    assert not torch.equal(curve3.bend[0], curve4.bend[0])


def test_nan_on_a_path_is_a_clear_error(endpoints):
    a, _ = endpoints
    bad = small_cnn(9)
    with torch.no_grad():
        bad[5].weight.fill_(float("nan"))
    # a measurement that went non-finite (the CLI exits 1), distinct from bad input (exit 2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at t=0\.5 on the linear path"):
        linear_path(a, bad, _loader(100), num_points=3, bn_data=None)
    with pytest.raises(NonFiniteLossError, match="Bezier curve training diverged: non-finite loss"):
        train_bezier(a, bad, _loader(100), epochs=1, progress=False)
    with pytest.raises(LandscapeError, match="num_points must be >= 2") as bad_input:
        linear_path(a, a, _loader(100), num_points=1)
    assert not isinstance(bad_input.value, NonFiniteLossError)
