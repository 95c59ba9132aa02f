"""Magnitude masks (uniform / global, head kept dense) and retraining with the mask fixed exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.regimes.masks import (
    MaskKeeper,
    NothingPrunableError,
    apply_masks,
    check_density,
    magnitude_masks,
    mask_stats,
    prunable_layers,
)
from htsr.regimes.model import PreResNet, build_model
from htsr.training import seeded_loader, train


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def test_prunable_layers_keep_the_final_linear_dense():
    m = _toy()
    assert list(prunable_layers(m)) == ["0", "2"]
    names = list(prunable_layers(build_model(8, 4)))
    assert "fc" not in names and names[0] == "conv1"
    assert all(isinstance(dict(build_model(8, 4).named_modules())[n], nn.Conv2d) for n in names)


def test_uniform_masks_keep_the_largest_weights_of_each_layer():
    m = _toy()
    masks = magnitude_masks(m, 0.25, "uniform")
    for name, mod in prunable_layers(m).items():
        w = mod.weight.detach().abs().numpy().ravel()
        keep = masks[f"{name}.weight"].numpy().ravel()
        n_pruned = int(w.size * 0.75)  # rounded down, as htsr.pruning's selector
        order = np.argsort(w, kind="stable")
        expected = np.ones(w.size, bool)
        expected[order[:n_pruned]] = False
        assert (keep == expected).all()
    assert "4.weight" not in masks


def test_global_masks_use_one_threshold():
    m = _toy()
    masks = magnitude_masks(m, 0.3, "global")
    all_w = np.concatenate([mod.weight.detach().abs().numpy().ravel() for mod in prunable_layers(m).values()])
    thr = np.sort(all_w)[int(all_w.size * 0.7)]  # the smallest kept magnitude
    for name, mod in prunable_layers(m).items():
        w = mod.weight.detach().abs().numpy()
        assert (masks[f"{name}.weight"].numpy() == (w >= thr)).all()
    kept = sum(int(v.sum()) for v in masks.values())
    assert kept == all_w.size - int(all_w.size * 0.7)
    # per-layer densities differ under a global threshold (the layers have different scales)
    dens = [float(v.float().mean()) for v in masks.values()]
    assert abs(dens[0] - dens[1]) > 1e-3


def test_density_one_keeps_everything_and_bad_densities_fail():
    m = _toy()
    assert all(bool(v.all()) for v in magnitude_masks(m, 1.0).values())
    for bad in (0, 0.0, -0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ConfigError, match="density"):
            check_density(bad)
        with pytest.raises(ConfigError, match="density"):
            magnitude_masks(m, bad)


def test_nothing_prunable():
    with pytest.raises(NothingPrunableError, match="nothing to prune"):
        magnitude_masks(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 0.5)
    with pytest.raises(NothingPrunableError, match="nothing to prune"):
        prunable_layers(nn.ReLU())


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def test_pruned_weights_stay_exactly_zero_through_sgd_with_momentum_and_weight_decay():
    model = PreResNet(8, 4)
    masks = magnitude_masks(model, 0.2)
    apply_masks(model, masks)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3, nesterov=True)
    keeper = MaskKeeper(model, masks)
    train(model, seeded_loader(x, y, 16, 0), opt, epochs=3, callbacks=[keeper])
    params = dict(model.named_parameters())
    for k, keep in masks.items():
        w = params[k].detach()
        assert torch.count_nonzero(w[~keep]) == 0
        assert (w[~keep] == 0).all()
        # kept weights did train, so the check could fail
        assert not torch.equal(w[keep], before[k][keep])
        # the momentum buffer of a pruned weight never moved either
        assert torch.count_nonzero(opt.state[params[k]]["momentum_buffer"][~keep]) == 0
    assert mask_stats(model, masks)["nonzero"] == mask_stats(model, masks)["kept"]
    assert not keeper.handles  # hooks removed at the end


def test_without_the_keeper_the_same_training_revives_pruned_weights():
    model = PreResNet(8, 4)
    masks = magnitude_masks(model, 0.2)
    apply_masks(model, masks)
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    train(model, seeded_loader(x, y, 16, 0), opt, epochs=1)
    params = dict(model.named_parameters())
    assert sum(int(torch.count_nonzero(params[k].detach()[~m])) for k, m in masks.items()) > 0


def test_mask_fixed_under_sam_and_adam():
    from htsr.landscape import SAM

    for make in (lambda p: SAM(p, torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9, weight_decay=1e-2),
                 lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)):
        model = PreResNet(8, 4)
        masks = magnitude_masks(model, 0.1, "global")
        x, y = _data()
        train(model, seeded_loader(x, y, 16, 1), make(model.parameters()), epochs=1,
              callbacks=[MaskKeeper(model, masks)])
        params = dict(model.named_parameters())
        assert all(torch.count_nonzero(params[k].detach()[~m]) == 0 for k, m in masks.items())


def test_masks_must_fit_the_model():
    model = PreResNet(8, 4)
    with pytest.raises(ConfigError, match="does not have"):
        apply_masks(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="shape"):
        apply_masks(model, {"conv1.weight": torch.ones(3, dtype=torch.bool)})


def test_preresnet_shapes_and_depth_check():
    m = PreResNet(20, 16)
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(272_000, rel=0.02)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="6n"):
        PreResNet(10, 8)
