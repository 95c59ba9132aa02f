"""Loss surfaces: filter-normalised directions, 1-D/2-D grids, lines and planes between models, BN re-estimation,
NaN points, plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from htsr.landscape.directions import model_direction, plane_through, random_direction
from htsr.landscape.objective import LandscapeError, Objective, reestimate_bn
from htsr.landscape.surfaces import (
    line_between,
    plane_between,
    random_surface_1d,
    random_surface_2d,
    surface_1d,
    surface_2d,
)
from tests.digits_helpers import digits, fit_sgd, small_cnn

pytestmark = pytest.mark.usefixtures("torch_one_thread_module")


def _trained(seed: int) -> nn.Module:
    x, y = digits()
    return fit_sgd(small_cnn(seed), x, y, steps=20).eval()


@pytest.fixture(scope="module")
def models():
    return [_trained(0), _trained(1), _trained(2)]


@pytest.fixture(scope="module")
def batch():
    x, y = digits()
    return x[1000:1200], y[1000:1200]


def test_filter_normalised_direction(models, batch):
    obj = Objective(models[0], batch)
    d = random_direction(obj, seed=3)
    parts = dict(zip(obj.names, obj.unflatten(d), strict=True))
    w = dict(models[0].named_parameters())
    conv = parts["0.weight"]
    np.testing.assert_allclose(conv.flatten(1).norm(dim=1).detach().numpy(),
                               w["0.weight"].flatten(1).norm(dim=1).detach().numpy(), rtol=1e-5)
    lin = parts["5.weight"]
    np.testing.assert_allclose(lin.norm(dim=1).numpy(), w["5.weight"].norm(dim=1).detach().numpy(), rtol=1e-5)
    for n in ("0.bias", "1.weight", "1.bias", "5.bias"):  # biases and BN parameters ignored
        assert torch.all(parts[n] == 0)
    kept = dict(zip(obj.names, obj.unflatten(random_direction(obj, seed=3, ignore_biasbn=False)), strict=True))
    assert torch.equal(kept["1.weight"], w["1.weight"].detach())  # Li et al. copy the weights when not ignored
    assert torch.equal(kept["0.weight"], conv)  # same seed, same filters
    assert torch.equal(random_direction(obj, seed=3), d)
    assert not torch.equal(random_direction(obj, seed=4), d)
    layer = dict(zip(obj.names, obj.unflatten(random_direction(obj, seed=3, norm="layer")), strict=True))
    assert float(layer["5.weight"].norm()) == pytest.approx(float(w["5.weight"].norm()), rel=1e-5)
    with pytest.raises(LandscapeError, match="norm"):
        random_direction(obj, norm="model")


def test_surface_1d_centre_restores_weights_and_is_seeded(models, batch):
    obj = Objective(models[0], batch)
    before = obj.get_vector()
    bn_before = models[0][1].running_mean.clone()
    s = random_surface_1d(obj, np.linspace(-1, 1, 5), seed=0, bn_data=batch)
    assert torch.equal(obj.get_vector(), before)
    assert torch.equal(models[0][1].running_mean, bn_before)
    s0 = random_surface_1d(obj, [0.0], seed=0)
    assert s0.loss[0] == pytest.approx(obj.loss(), rel=1e-6)
    assert s0.error[0] == pytest.approx(obj.metrics()["error"], abs=1e-9)
    assert np.argmin(s.loss) == 2  # a trained model sits near the bottom of the valley
    assert s.loss[0] > s.loss[2] and s.loss[4] > s.loss[2]
    again = random_surface_1d(obj, np.linspace(-1, 1, 5), seed=0, bn_data=batch)
    np.testing.assert_array_equal(again.loss, s.loss)
    df = s.to_pandas()
    assert list(df.columns) == ["coord", "loss", "error"] and len(df) == 5


def test_bn_reestimation_matches_data_statistics(models, batch):
    m = small_cnn(5)
    x, _ = batch
    # uneven batches: the cumulative average weighted by batch size gives the mean over all samples
    loader = [x[:64], x[64:128], x[128:192], x[192:]]
    n = reestimate_bn(m, [(b, None) for b in loader])
    assert n == len(x)
    with torch.no_grad():
        h = m[0](x)
    np.testing.assert_allclose(m[1].running_mean.numpy(), h.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    assert not m.training or m.training is True  # mode restored below
    m.eval()
    reestimate_bn(m, (x, None))
    assert not m.training
    assert m[1].momentum == 0.1
    np.testing.assert_allclose(m[1].running_var.numpy(), h.var(dim=(0, 2, 3), unbiased=True).numpy(), rtol=1e-4)
    assert reestimate_bn(nn.Linear(3, 2), torch.randn(4, 3)) == 0


def test_surface_2d_and_nan_points_are_recorded(models, batch):
    obj = Objective(models[0], batch)
    s = random_surface_2d(obj, [-0.5, 0.0, 0.5], [-0.5, 0.0, 0.5], seed=1)
    assert s.loss.shape == (3, 3)
    assert s.loss[1, 1] == pytest.approx(obj.loss(), rel=1e-6)
    d = random_direction(obj, seed=0)
    bad = surface_1d(obj, d, [0.0, 1.0, 1e39])  # 1e39 overflows float32: inf weights, NaN loss
    assert np.isfinite(bad.loss[:2]).all()
    assert np.isnan(bad.loss[2]) and np.isnan(bad.error[2])
    bad2 = surface_2d(obj, d, d, [0.0, 1e39], [0.0])
    assert np.isfinite(bad2.loss[0, 0]) and np.isnan(bad2.loss[0, 1])
    assert torch.equal(obj.get_vector(), Objective(models[0], batch).get_vector())
    with pytest.raises(LandscapeError, match="expected"):
        surface_1d(obj, d[:-1])
    with pytest.raises(LandscapeError, match="finite"):
        surface_1d(obj, d, [0.0, float("nan")])


def test_line_and_plane_between_models(models, batch):
    a, b, c = models
    obj = Objective(a, batch)
    line = line_between(obj, b, [0.0, 0.5, 1.0])
    assert line.loss[0] == pytest.approx(obj.loss(), rel=1e-6)
    # at t=1 the weights are b's; BN statistics are a's unless re-estimated: compare with that hybrid
    hybrid = small_cnn(0)
    hybrid.load_state_dict(a.state_dict())
    hybrid.load_state_dict({k: v for k, v in b.state_dict().items() if "running" not in k and "num_batches" not in k},
                           strict=False)
    assert line.loss[2] == pytest.approx(Objective(hybrid, batch).loss(), rel=1e-5)
    assert line.loss[1] > min(line.loss[0], line.loss[2])  # independently trained: a barrier between them
    line_bn = line_between(obj, b, [1.0], bn_data=batch)
    b2 = small_cnn(0)
    b2.load_state_dict(b.state_dict())
    reestimate_bn(b2, batch)
    assert line_bn.loss[0] == pytest.approx(Objective(b2.eval(), batch).loss(), rel=1e-5)

    u, v, pts = plane_through(obj, b, c)
    assert float(u @ v) == pytest.approx(0.0, abs=1e-5)
    assert float(u.norm()) == pytest.approx(1.0, rel=1e-5)
    assert float(model_direction(obj, b).norm()) == pytest.approx(pts[1][0], rel=1e-5)
    pl = plane_between(obj, b, c, steps=3, margin=0.0)
    assert pl.loss.shape == (3, 3) and pl.meta["points"] == pts
    assert pl.loss[0, 0] == pytest.approx(obj.loss(), rel=1e-5)  # origin = model a (grid starts at it)
    with pytest.raises(LandscapeError, match="collinear|not defined"):
        plane_through(obj, b, b)
    other = nn.Sequential(nn.Linear(64, 10))
    with pytest.raises(LandscapeError, match="different architectures"):
        model_direction(obj, other)


def test_plots_are_pngs(models, batch, tmp_path):
    from htsr.landscape.hessian import spectral_density
    from htsr.landscape.paths import PathResult
    from htsr.landscape.plots import plot_contour, plot_density, plot_path, plot_surface_1d, plot_surface_3d

    obj = Objective(models[0], batch)
    s1 = random_surface_1d(obj, np.linspace(-1, 1, 4))
    s2 = random_surface_2d(obj, np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    s2.loss[0, 0] = np.nan  # NaN points are left blank, not a crash
    pr = PathResult(np.linspace(0, 1, 5), np.array([1.0, 2, 3, 2, 1]), np.array([0.1, 0.2, 0.3, 0.2, 0.1]), "linear")
    dens = spectral_density(obj, num_iter=5, n_v=1)
    paths = [plot_surface_1d(s1, tmp_path / "a.png"), plot_contour(s2, tmp_path / "b.png"),
             plot_surface_3d(s2, tmp_path / "c.png"), plot_path([pr], tmp_path / "d.png"),
             plot_density(dens, tmp_path / "e.png", num_bins=200)]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
