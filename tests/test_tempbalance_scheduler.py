"""The TempBalance scheduler on real models: grouping by name, schedules, fallbacks, resume."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import htsr
from htsr.errors import ConfigError
from htsr.models.vision import make_vision_model
from htsr.tempbalance.scheduler import TempBalance, TempBalanceCallback, TempBalanceError
from htsr.training import train
from tests.esd_reference import esd, hill_alpha_median, tb_linear_map


def _sgd(model, **kw):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **kw)


def _cosine(t_max=10):
    return lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max)


def _owner_modules(model, group):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)].rsplit(".", 1)[0] for p in group["params"]}


def test_resnet_groups_matched_by_name_with_bn_following(torch_one_thread):
    m = make_vision_model("resnet", seed=0)
    opt = _sgd(m)
    tb = TempBalance(m, opt)
    assert tb.units_ == ["layers.0.0.conv1", "layers.0.0.conv2", "layers.1.0.conv1", "layers.1.0.conv2",
                         "layers.2.0.conv1", "layers.2.0.conv2"]
    assert tb.excluded_["conv1"].startswith("first layer")
    assert tb.excluded_["linear"].startswith("last layer")
    assert "too small" in tb.excluded_["layers.1.0.shortcut.0"]  # 1x1 conv 16->32: 16 eigenvalues < 50
    for u in tb.units_:
        (g,) = tb.group_of(u)
        assert _owner_modules(m, g) == {u, u.replace("conv", "bn")}
    untuned = [g for g in opt.param_groups if g["tb_unit"] is None]
    assert len(untuned) == 1
    mods = _owner_modules(m, untuned[0])
    assert {"conv1", "bn1", "linear", "layers.1.0.shortcut.0", "layers.1.0.shortcut.1"} <= mods
    # every parameter is in exactly one group
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())


def _reference_units(model, min_evals=50, kinds=(nn.Conv2d, nn.Linear)):
    """The reference's tuned layers: every Conv2d/Linear in module order, first and last dropped, then those with
    fewer than ``min_evals`` pooled eigenvalues; with each one's PL_Alpha_Hill at the median (numpy)."""
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)][1:-1]
    out = {}
    for n, m in mods:
        ev = esd(m)
        if ev.size >= min_evals:
            out[n] = hill_alpha_median(ev)
    return out


def test_multipliers_are_the_linear_map_of_reference_alphas(torch_one_thread):
    """Alphas from the reference estimator (numpy SVD, median xmin), multipliers from np.interp as the reference's
    tb_linear_map: nothing of htsr's fitter or maps is used for the expectation."""
    m = make_vision_model("resnet", seed=1)
    opt = _sgd(m)
    tb = TempBalance(m, opt, base_scheduler=_cosine())
    ref = _reference_units(m)
    assert tb.units_ == list(ref)
    alphas = np.array(list(ref.values()))
    np.testing.assert_allclose([tb.values_[u] for u in tb.units_], alphas, rtol=1e-9)
    expect = tb_linear_map(alphas, 0.5, 1.5)
    np.testing.assert_allclose([tb.multipliers_[u] for u in tb.units_], expect, rtol=1e-9)
    assert expect.min() == 0.5 and expect.max() == 1.5
    for u, e in zip(tb.units_, expect, strict=True):
        assert tb.group_of(u)[0]["lr"] == pytest.approx(0.1 * e)
    # one cosine step: base 0.1 * (1 + cos(pi/10)) / 2, multipliers recomputed (weights unchanged -> same)
    opt.step()  # no gradients: changes nothing, keeps torch's call-order check quiet
    tb.step()
    base = 0.05 * (1 + math.cos(math.pi / 10))
    assert opt.param_groups[0]["lr"] == pytest.approx(base)
    for u, e in zip(tb.units_, expect, strict=True):
        assert tb.group_of(u)[0]["lr"] == pytest.approx(base * e)
    assert tb.n_updates == 2 and len(tb.history) == 2 * len(tb.units_)


def test_golden_resnet_against_the_reference_estimator(torch_one_thread):
    """issue 20: a ResNet whose 1x1 shortcut convs are tuned (>= 50 eigenvalues). Expected alphas from
    net_esd_estimator's formulas (conv_norm 0.5, pooled kernel positions, PL_Alpha_Hill at the median) in numpy;
    BatchNorms follow their conv by the reference's name rule (bn -> conv), so each shortcut BN and the stem BN keep
    the base rate while the shortcut conv is tuned."""
    m = make_vision_model("resnet", width=64, seed=0)
    opt = _sgd(m)
    tb = TempBalance(m, opt)
    ref = _reference_units(m)
    assert "layers.1.0.shortcut.0" in ref and "layers.2.0.shortcut.0" in ref
    assert tb.units_ == list(ref)
    np.testing.assert_allclose([tb.values_[u] for u in tb.units_], list(ref.values()), rtol=1e-9)
    np.testing.assert_allclose([tb.multipliers_[u] for u in tb.units_], tb_linear_map(np.array(list(ref.values()))),
                               rtol=1e-9)
    names = {id(p): n for n, p in m.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    for u in tb.units_:
        assert lr_of[f"{u}.weight"] == pytest.approx(0.1 * tb.multipliers_[u])
        if ".conv" in u:  # layers.K.0.convJ -> layers.K.0.bnJ
            bn = u.replace("conv", "bn")
            assert lr_of[f"{bn}.weight"] == lr_of[f"{bn}.bias"] == lr_of[f"{u}.weight"]
    for bn in ("bn1", "layers.1.0.shortcut.1", "layers.2.0.shortcut.1"):
        assert lr_of[f"{bn}.weight"] == 0.1 and lr_of[f"{bn}.bias"] == 0.1
    assert lr_of["layers.1.0.shortcut.0.weight"] != 0.1
    # the order rule (not the default) would give the shortcut BN its conv's rate
    m2 = make_vision_model("resnet", width=64, seed=0)
    opt2 = _sgd(m2)
    TempBalance(m2, opt2, norms="order")
    names2 = {id(p): n for n, p in m2.named_parameters()}
    lr2 = {names2[id(p)]: g["lr"] for g in opt2.param_groups for p in g["params"]}
    assert lr2["layers.1.0.shortcut.1.weight"] == lr2["layers.1.0.shortcut.0.weight"] != 0.1


def test_config_object_kwargs_and_analysis_given_agree(torch_one_thread, monkeypatch):
    """One convention: settings as keywords, as a TempBalanceConfig, or as a dict give the same scheduler; an
    Analysis the caller has is used instead of analysing again (the engine is not called at construction)."""
    from htsr.tempbalance.config import TempBalanceConfig

    def build(**kw):
        m = make_vision_model("resnet", seed=1)
        tb = TempBalance(m, _sgd(m), **kw)
        return tb.units_, tb.values_, tb.multipliers_

    ref = build(mapping="rank", s1=0.6, s2=1.4)
    assert build(config=TempBalanceConfig(mapping="rank", s1=0.6, s2=1.4)) == ref
    assert build(config={"mapping": "rank", "s1": 0.6}, s2=1.4) == ref
    m = make_vision_model("resnet", seed=1)
    a = htsr.analyze(m, preset="tempbalance", workers=1)
    import htsr.spectra.analysis as SA

    def boom(*args, **kw):
        raise AssertionError("analyze() called although an analysis was given")

    monkeypatch.setattr(SA, "analyze", boom)
    tb = TempBalance(m, _sgd(m), analysis=a, mapping="rank", s1=0.6, s2=1.4, interval=10**6)
    assert (tb.units_, tb.values_, tb.multipliers_) == ref
    with pytest.raises(ConfigError, match="unknown option.*'mapp'.*valid: .*mapping"):
        TempBalance(m, _sgd(m), mapp="rank")
    with pytest.raises(ConfigError, match="interval must be an integer"):
        TempBalanceConfig(interval="abc")
    with pytest.raises(ConfigError, match="analysis must be an htsr.Analysis"):
        TempBalance(m, _sgd(m), analysis={"rows": []})


def test_position_independent_matching_and_existing_groups(torch_one_thread):
    """Parameters given in reverse order and in two groups (decay / no decay): each unit still gets exactly its
    own parameters, in one group per source group, with that group's hyper-parameters."""
    m = make_vision_model("resnet", seed=2)
    params = list(m.named_parameters())[::-1]
    opt = torch.optim.SGD([{"params": [p for n, p in params if p.ndim > 1], "weight_decay": 5e-4},
                           {"params": [p for n, p in params if p.ndim <= 1], "weight_decay": 0.0, "lr": 0.2}],
                          lr=0.1, momentum=0.9)
    tb = TempBalance(m, opt, update_at_init=False)
    for u in tb.units_:
        gs = tb.group_of(u)
        assert sorted(g["weight_decay"] for g in gs) == [0.0, 5e-4]
        for g in gs:
            assert _owner_modules(m, g) <= {u, u.replace("conv", "bn")}
            assert g["lr"] == (0.1 if g["weight_decay"] else 0.2)  # each source group's own base rate


def test_step_interval_and_base_lr(torch_one_thread):
    m = make_vision_model("vgg", seed=0)
    opt = _sgd(m)
    tb = TempBalance(m, opt, interval=3, mapping="rank")
    assert tb.n_updates == 1
    for _ in range(6):
        tb.step(base_lr=0.01)
    assert tb.n_updates == 3 and tb.step_count == 6
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    for u in tb.units_:
        assert tb.group_of(u)[0]["lr"] == pytest.approx(0.01 * tb.multipliers_[u])


def test_external_lr_change_warns_and_is_overwritten(torch_one_thread, caplog):
    m = make_vision_model("vgg", seed=0)
    opt = _sgd(m)
    tb = TempBalance(m, opt, interval=100)
    opt.param_groups[-1]["lr"] = 123.0
    with caplog.at_level(logging.WARNING, logger="htsr.tempbalance.scheduler"):
        tb.step()
    assert "changed outside TempBalance" in caplog.text
    assert opt.param_groups[-1]["lr"] < 1.0


def test_nan_alpha_keeps_base_rate_and_logs(torch_one_thread, caplog):
    m = make_vision_model("vgg", seed=0)
    opt = _sgd(m)
    tb = TempBalance(m, opt, interval=1)
    bad = tb.units_[1]
    with torch.no_grad():
        dict(m.named_modules())[bad].weight[0, 0, 0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="htsr.tempbalance.scheduler"):
        tb.step(base_lr=0.1)
    assert tb.multipliers_[bad] == 1.0 and math.isnan(tb.values_[bad])
    assert tb.group_of(bad)[0]["lr"] == pytest.approx(0.1)
    assert f"{bad} has no finite alpha" in caplog.text and "keeps the base learning rate" in caplog.text
    last = tb.history[tb.history["update"] == tb.n_updates - 1].set_index("unit")
    assert bool(last.loc[bad, "fallback"]) and not last.drop(index=bad)["fallback"].any()
    others = [u for u in tb.units_ if u != bad]
    assert min(tb.multipliers_[u] for u in others) == pytest.approx(0.5)  # the map runs over the finite ones


def test_frozen_layer_and_small_layers_are_not_tuned(torch_one_thread):
    m = make_vision_model("resnet", seed=0)
    for p in m.layers[0][0].conv2.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    tb = TempBalance(m, opt)
    assert "layers.0.0.conv2" not in tb.units_
    assert tb.excluded_["layers.0.0.conv2"].startswith("frozen")


def test_no_eligible_layer_is_a_clear_error(torch_one_thread):
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Linear(16, 4))
    with pytest.raises(TempBalanceError, match="no layer of the model is eligible.*2: too small to fit"):
        TempBalance(m, _sgd(m))
    conv = nn.Sequential(nn.Flatten())
    with pytest.raises(TempBalanceError, match="no Linear/Conv"):
        TempBalance(conv, torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1))


def test_bad_configuration_errors(torch_one_thread):
    m = make_vision_model("vgg", seed=0)
    with pytest.raises(ConfigError, match="factory"):
        opt = _sgd(m)
        TempBalance(m, opt, base_scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))
    opt = _sgd(m)
    torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(ConfigError, match="already driven by an LR scheduler"):
        TempBalance(m, opt)
    with pytest.raises(ConfigError, match="sqrt map is defined for metric alpha or spectral_norm"):
        TempBalance(m, _sgd(m), mapping="sqrt", metric="alpha_hat")
    with pytest.raises(ConfigError, match="unknown metric"):
        TempBalance(m, _sgd(m), metric="stable_rank")
    opt = _sgd(m)
    TempBalance(m, opt)
    with pytest.raises(ConfigError, match="already split"):
        TempBalance(m, opt)


def test_layernorm_order_pairing_stays_inside_parent(torch_one_thread):
    """norms="order", pre-LN blocks: blocks.1.ln precedes blocks.1.fc in forward order but comes after blocks.0.fc in
    module order; the reference's 'preceding Linear' rule would tie it to block 0. Here it stays at the base rate."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(64)
            self.fc = nn.Linear(64, 64)
            self.post_ln = nn.LayerNorm(64)

    m = nn.Module()
    m.inp = nn.Linear(4, 64)
    m.blocks = nn.ModuleList([Block(), Block()])
    m.out = nn.Linear(64, 2)
    tb = TempBalance(m, _sgd(m), norms="order")
    assert tb.units_ == ["blocks.0.fc", "blocks.1.fc"]
    g1 = tb.group_of("blocks.1.fc")[0]
    assert _owner_modules(m, g1) == {"blocks.1.fc", "blocks.1.post_ln"}
    untuned = next(g for g in opt_groups(tb) if g["tb_unit"] is None)
    assert {"blocks.0.ln", "blocks.1.ln"} <= _owner_modules(m, untuned)


def opt_groups(tb):
    return tb.optimizer.param_groups


def test_block_unit_on_pretrained_minilm(minilm_dir, torch_one_thread):
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(minilm_dir))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    tb = TempBalance(m, opt, unit="block", mapping="sigmoid", exclude_first=False, exclude_last=False,
                     analysis_options={"xmin_pos": 1.5})
    assert tb.units_ == [f"encoder.layer.{i}" for i in range(6)]
    assert tb.excluded_["pooler.dense"].startswith("not inside a block")
    for u in tb.units_:
        assert len(tb.layers_[u]) == 6
        ref = [hill_alpha_median(esd(m.get_submodule(n)), xmin_pos=1.5) for n in tb.layers_[u]]
        assert tb.values_[u] == pytest.approx(np.mean(ref), rel=1e-9)
        mods = {n for n, p in m.named_parameters() if any(p is q for g in tb.group_of(u) for q in g["params"])}
        assert f"{u}.attention.output.LayerNorm.weight" in mods and len(mods) == 16
    mult = np.array([tb.multipliers_[u] for u in tb.units_])
    assert np.all((mult > 10**-0.5) & (mult < 10**0.5)) and mult.std() > 0


def _digits_loader(seed):
    from htsr.data.digits import digits_split

    x, y, _, _ = digits_split(0.1, seed)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _setup(seed=0):
    m = make_vision_model("vgg", width=8, seed=seed)
    opt = _sgd(m, weight_decay=5e-4)
    tb = TempBalance(m, opt, base_scheduler=_cosine(8), interval=2,
                     analysis_options={"min_evals": 20})
    return m, opt, tb


def test_callback_in_shared_loop_and_resume_gives_same_trajectory(torch_one_thread):
    # uninterrupted: 4 epochs
    m, opt, tb = _setup()
    res = train(m, _digits_loader(0), opt, epochs=4, callbacks=[TempBalanceCallback(tb)], progress=False)
    assert {"tb_mean_value", "tb_min_mult", "tb_max_mult", "tb_time_s"} <= set(res.history.columns)
    assert tb.step_count == 4 and tb.n_updates == 3
    # interrupted after 2 epochs, state saved, restored into fresh objects, 2 more epochs
    m1, opt1, tb1 = _setup()
    loader = _digits_loader(0)
    train(m1, loader, opt1, epochs=2, callbacks=[TempBalanceCallback(tb1)], progress=False)
    saved = copy.deepcopy((m1.state_dict(), opt1.state_dict(), tb1.state_dict(), loader.generator.get_state()))
    m2, opt2, tb2 = _setup(seed=5)  # different init: everything must come from the saved state
    m2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    tb2.load_state_dict(saved[2])
    loader2 = _digits_loader(0)
    loader2.generator.set_state(saved[3])
    train(m2, loader2, opt2, epochs=2, callbacks=[TempBalanceCallback(tb2)], progress=False)
    for (n, p), q in zip(m.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n
    assert tb2.get_last_lr() == pytest.approx(tb.get_last_lr())
    assert tb2.history.drop(columns="time_s").equals(tb.history.drop(columns="time_s"))


def test_load_state_dict_rejects_other_layout(torch_one_thread):
    m, opt, tb = _setup()
    other = make_vision_model("resnet", seed=0)
    tb_other = TempBalance(other, _sgd(other))
    with pytest.raises(TempBalanceError, match="different tuned units"):
        tb_other.load_state_dict(tb.state_dict())


@pytest.mark.parametrize("metric", ["alpha_hat", "spectral_norm", "log_spectral_norm"])
def test_other_metrics_come_from_the_engine(metric, torch_one_thread):
    m = make_vision_model("vgg", seed=3)
    tb = TempBalance(m, _sgd(m), metric=metric)
    a = htsr.analyze(m, preset="tempbalance", workers=1)
    for u in tb.units_:
        row = a[u]
        want = row[metric]  # the analysis row's own column, not a re-derivation
        assert tb.values_[u] == pytest.approx(want)
    assert set(tb.history["metric"]) == {metric}


def test_gpt2_conv1d_layers_are_tuned_by_the_hf_defaults(torch_one_thread):
    from transformers import GPT2Config, GPT2LMHeadModel

    from htsr.tempbalance.config import EMNLP24

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=100, n_positions=32))
    tb = TempBalance(m, torch.optim.AdamW(m.parameters(), lr=1e-4), config=EMNLP24)
    assert tb.units_ == ["transformer.h.0", "transformer.h.1"]
    assert "transformer.h.0.attn.c_attn" in tb.layers_["transformer.h.0"]
