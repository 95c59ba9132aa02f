"""SharpBalance and its measures: calibration on hand-made cases, the split on known score vectors, the phase-2
update against a step-by-step reference, corruptions, resumable training and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from htsr.ensembles.metrics import expected_calibration_error, nll, outputs_report
from htsr.ensembles.split import sam_mask, sam_masks, selected
from htsr.errors import ConfigError, HtsrError

# ----------------------------------------------------------------------------------- calibration
PROBS = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45]])
LAB = np.array([0, 1, 1, 1])  # correct, wrong, correct, wrong; confidences .95 .85 .65 .55


def test_ece_by_hand():
    # 10 bins: every sample alone in its bin -> mean of |correct - confidence|
    assert expected_calibration_error(PROBS, LAB, 10) == pytest.approx((0.05 + 0.85 + 0.35 + 0.55) / 4)
    # 2 bins: all four in (0.5, 1] -> |accuracy 0.5 - mean confidence 0.75|
    assert expected_calibration_error(PROBS, LAB, 2) == pytest.approx(0.25)
    # 4 bins: (0.5, .75] holds .65 (right) and .55 (wrong); (.75, 1] holds .95 (right) and .85 (wrong)
    assert expected_calibration_error(PROBS, LAB, 4) == pytest.approx(0.5 * abs(0.5 - 0.6) + 0.5 * abs(0.5 - 0.9))


def test_nll_by_hand():
    want = -(math.log(0.95) + math.log(0.15) + math.log(0.65) + math.log(0.45)) / 4
    assert nll(PROBS, LAB) == pytest.approx(want)


def test_ensemble_report_by_hand():
    p2 = np.array([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.5, 0.5]])
    logits = np.stack([np.log(PROBS), np.log(p2)])  # softmax(log p) = p
    rep = outputs_report(logits, LAB, n_bins=10)
    # ensemble (PROBS + p2) / 2: [.775,.225] [.575,.425] [.275,.725] [.525,.475]
    assert rep["ensemble_nll"] == pytest.approx(-np.mean(np.log([0.775, 0.425, 0.725, 0.475])))
    # ensemble predictions 0,0,1,0 vs labels 0,1,1,1 -> correct, wrong, correct, wrong
    assert rep["ensemble_accuracy"] == pytest.approx(0.5)
    assert rep["ensemble_ece"] == pytest.approx((abs(1 - .775) + abs(0 - .575) + abs(1 - .725) + abs(0 - .525)) / 4)
    assert rep["member_ece"][0] == pytest.approx(0.45)
    # member 2 predicts 0,1,1,(tie -> class 0): correct, correct, correct, wrong
    assert rep["member_accuracy"] == pytest.approx([0.5, 0.75])
    kl01 = np.mean([sum(a * math.log(a / b) for a, b in zip(pa, pb, strict=True)) for pa, pb in zip(PROBS, p2,
                                                                                                     strict=True)])
    kl10 = np.mean([sum(b * math.log(b / a) for a, b in zip(pa, pb, strict=True)) for pa, pb in zip(PROBS, p2,
                                                                                                     strict=True)])
    assert rep["kl_matrix"][0][1] == pytest.approx(kl01)
    assert rep["kl_matrix"][1][0] == pytest.approx(kl10)
    assert rep["kl"] == pytest.approx((kl01 + kl10) / 2)
    x, y = logits[0] - logits[0].mean(0), logits[1] - logits[1].mean(0)
    cka = np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    assert rep["cka"] == pytest.approx(cka)
    assert rep["disagreement"] == pytest.approx(0.25)  # they differ on sample 2 only


def test_kl_matrix_with_temperature_against_scipy():
    from scipy.special import rel_entr, softmax

    from htsr.landscape.diversity import kl_matrix, mean_pairwise_kl

    rng = np.random.default_rng(0)
    out = rng.normal(size=(3, 20, 4)) * 3
    p = softmax(out / 2.0, axis=-1)
    want = np.array([[rel_entr(p[i], p[j]).sum(-1).mean() for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(kl_matrix(out, temperature=2.0), want, rtol=1e-10, atol=1e-12)
    assert mean_pairwise_kl(out, 2.0) == pytest.approx(want[~np.eye(3, dtype=bool)].mean())
    with pytest.raises(ConfigError, match="temperature"):
        kl_matrix(out, temperature=0)


def test_calibration_bad_input():
    with pytest.raises(ConfigError, match="n_bins"):
        expected_calibration_error(PROBS, LAB, 0)
    with pytest.raises(ConfigError, match="labels"):
        nll(PROBS, [0, 1, 2, 1])
    with pytest.raises(ConfigError, match="at least 2 members"):
        outputs_report(np.log(PROBS)[None], LAB)


# ----------------------------------------------------------------------------------- the split
S = np.array([[10, 9, 1, 2, 3, 4, 5, 6, 7, 8],
              [1, 2, 10, 9, 3, 4, 5, 6, 7, 8],
              [1, 2, 3, 10, 9, 4, 5, 6, 7, 8]], dtype=float)  # k = 0.2 -> 2 samples per member


def _idx(mask):
    return set(np.flatnonzero(mask).tolist())


def test_top_k_and_bottom_k_selection():
    assert selected(S[0], 0.2, "top").tolist() == [0, 1]
    assert selected(S[1], 0.2, "top").tolist() == [2, 3]
    assert selected(S[0], 0.2, "bottom").tolist() == [2, 3]
    assert selected(S[2], 0.2, "bottom").tolist() == [0, 1]
    assert selected(np.zeros(5), 0.4, "top").tolist() == [0, 1]  # ties: stable, lower index first
    assert selected(S[0], 0.05).tolist() == []  # int(0.05 * 10) = 0


def test_split_leftover_rules_top():
    # top sets: S0={0,1}, S1={2,3}, S2={3,4}; nobody's: R={5,6,7,8,9}
    assert _idx(sam_mask(S, 0, 0.2, leftover="none")) == {2, 3, 4}
    assert _idx(sam_mask(S, 0, 0.2, leftover="stride")) == {2, 3, 4, 5, 8}
    assert _idx(sam_mask(S, 0, 0.2, leftover="complement")) == {2, 3, 4, 6, 7, 9}
    assert _idx(sam_mask(S, 1, 0.2, leftover="stride")) == {0, 1, 3, 4, 6, 9}
    assert _idx(sam_mask(S, 1, 0.2, leftover="complement")) == {0, 1, 3, 4, 5, 7, 8}
    assert _idx(sam_mask(S, 2, 0.2, leftover="stride")) == {0, 1, 2, 3, 7}
    assert _idx(sam_mask(S, 2, 0.2, leftover="complement")) == {0, 1, 2, 3, 5, 6, 8, 9}
    # stride shares every leftover sample with exactly one member; complement with all but one
    m = sam_masks(S, 0.2)
    assert m.shape == (3, 10) and all(m[:, r].sum() == 1 for r in (5, 6, 7, 8, 9))


def test_split_bottom_is_the_public_codes_choice():
    # bottom sets: S0={2,3}, S1={0,1}, S2={0,1}; R={4,...,9}
    assert _idx(sam_mask(S, 0, 0.2, select="bottom")) == {0, 1, 4, 7}
    assert _idx(sam_mask(S, 1, 0.2, select="bottom")) == {0, 1, 2, 3, 5, 8}


@pytest.mark.parametrize("k", [0, 1, 1.5, -0.1, float("nan")])
def test_split_rejects_k_outside_open_unit_interval(k):
    with pytest.raises(ConfigError, match=r"k must be in the open interval \(0, 1\)"):
        sam_mask(S, 0, k)


def test_split_bad_input():
    with pytest.raises(ConfigError, match="at least 2 members"):
        sam_mask(S[:1], 0)
    with pytest.raises(ConfigError, match="member must be"):
        sam_mask(S, 3)
    with pytest.raises(ConfigError, match="leftover"):
        sam_mask(S, 0, leftover="half")
    with pytest.raises(ConfigError, match="NaN"):
        sam_mask(np.where(S > 9, np.nan, S), 0)


# ----------------------------------------------------------------------------------- the phase-2 update
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.bn = nn.BatchNorm1d(7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _Net().double()


def _reference_steps(model, batches, lr, mom, wd, rho):
    """The notes' update, written out: g_N on B_N, eps from grad L_{B_S}, g_S at theta + eps, SGD with momentum
    and weight decay as torch.optim.SGD defines it (buf = mom * buf + (g + wd p); p -= lr * buf)."""
    ce = nn.functional.cross_entropy
    params = list(model.parameters())
    bufs = [None] * len(params)
    model.train()
    for x, y, mask in batches:
        n, ns = len(y), int(mask.sum())
        nn_ = n - ns
        total = [torch.zeros_like(p) for p in params]
        if nn_:
            gn = torch.autograd.grad(ce(model(x[~mask]), y[~mask]) * (nn_ / n), params)
            total = [t + g for t, g in zip(total, gn, strict=True)]
        if ns:
            g = torch.autograd.grad(ce(model(x[mask]), y[mask]), params)
            norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
            eps = [rho * gi / (norm + 1e-12) for gi in g]
            with torch.no_grad():
                for p, e in zip(params, eps, strict=True):
                    p.add_(e)
            gs = torch.autograd.grad(ce(model(x[mask]), y[mask]) * (ns / n), params)
            with torch.no_grad():
                for p, e in zip(params, eps, strict=True):
                    p.sub_(e)
            total = [t + g for t, g in zip(total, gs, strict=True)]
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, total, strict=True)):
                d = g + wd * p
                bufs[i] = d.clone() if bufs[i] is None else bufs[i] * mom + d
                p.sub_(lr * bufs[i])


def test_phase2_update_matches_step_by_step_reference():
    from htsr.ensembles.optim import MixedSAM
    from htsr.training import train

    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4, 8), generator=g)
    masks = [torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool),  # mixed
             torch.zeros(8, dtype=torch.bool),                            # all SGD: g_N alone
             torch.ones(8, dtype=torch.bool),                             # all SAM: a SAM step
             torch.tensor([0, 0, 0, 0, 0, 1, 0, 1], dtype=torch.bool)]    # two SAM samples
    batches = [(x[i], y[i], masks[i]) for i in range(4)]
    ref = _net()
    _reference_steps(ref, batches, lr=0.1, mom=0.9, wd=5e-4, rho=0.2)
    model = _net()
    opt = MixedSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9, weight_decay=5e-4)
    train(model, batches, opt, loss_fn=opt.loss, epochs=1, progress=False)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)  # weights and BN running stats


def test_phase2_forwards_each_sample_once_plus_the_sam_part_once():
    from htsr.ensembles.optim import MixedSAM
    from htsr.training import train

    model = _net()
    seen = []
    model.fc1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    mask = torch.arange(16) % 4 == 0  # 4 SAM samples
    opt = MixedSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.01)
    train(model, [(x, y, mask)], opt, loss_fn=opt.loss, epochs=1, progress=False)
    assert sorted(seen) == [4, 4, 12]  # B_N at theta, B_S at theta, B_S at theta + eps
    assert opt.last_sam_fraction == 0.25


def test_a_lone_sam_sample_joins_the_sgd_part_under_batchnorm():
    from htsr.ensembles.optim import MixedSAM
    from htsr.training import train

    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    a = _net()
    oa = MixedSAM(a.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9)
    one = torch.zeros(8, dtype=torch.bool)
    one[3] = True
    train(a, [(x, y, one), (x, y, ~one)], oa, loss_fn=oa.loss, epochs=1, progress=False)
    assert oa.merged_singletons == 2
    ref = _net()
    _reference_steps(ref, [(x, y, torch.zeros(8, dtype=torch.bool)), (x, y, torch.ones(8, dtype=torch.bool))],
                     lr=0.1, mom=0.9, wd=0.0, rho=0.3)
    for pa, pb in zip(a.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


def test_mixed_sam_all_sam_batch_equals_the_toolkits_sam():
    from htsr.ensembles.optim import MixedSAM
    from htsr.landscape.sam import SAM
    from htsr.training import train

    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    a, b = _net(), _net()
    oa = MixedSAM(a.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9)
    ob = SAM(b.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9)
    train(a, [(x, y, torch.ones(8, dtype=torch.bool))] * 2, oa, loss_fn=oa.loss, epochs=1, progress=False)
    train(b, [(x, y)] * 2, ob, epochs=1, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


def test_mixed_sam_loads_sam_state_and_rejects_plain_batches():
    from htsr.ensembles.optim import MixedSAM
    from htsr.landscape.sam import SAM

    m = _net()
    sam = SAM(m.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    m(torch.randn(4, 5, dtype=torch.float64)).sum().backward()
    sam.first_step()
    sam.second_step()  # momentum buffers now exist
    mixed = MixedSAM(m.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    mixed.load_state_dict(sam.state_dict())
    assert all("momentum_buffer" in mixed.base_optimizer.state[p] for p in m.parameters())
    with pytest.raises(ConfigError, match="sam_mask"):
        mixed.loss(m, (torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(HtsrError, match="rho"):
        MixedSAM(m.parameters(), torch.optim.SGD, rho=-1.0, lr=0.1)


# ----------------------------------------------------------------------------------- configuration
def test_config_presets_and_bad_values():
    from htsr.ensembles.config import METHODS, preset_config

    assert set(METHODS.names()) == {"deep_ensemble", "sam_ensemble", "sharpbalance"}
    paper = preset_config("paper")
    assert (paper.arch, paper.width, paper.epochs, paper.initial_epochs, paper.rho, paper.k, paper.lr) == (
        "resnet18", 64, 200, 100, 0.2, 0.5, 0.1)
    assert preset_config("cpu").n_members == 3
    with pytest.raises(ConfigError, match="at least 2 members"):
        preset_config("cpu", n_members=1)
    with pytest.raises(ConfigError, match=r"k must be in the open interval \(0, 1\)"):
        preset_config("cpu", k=1.0)
    with pytest.raises(ConfigError, match="rho must be > 0"):
        preset_config("cpu", rho=0)
    with pytest.raises(ConfigError, match="rho must be > 0"):
        preset_config("cpu", rho=-0.1)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("gpu")
    with pytest.raises(ConfigError, match="valid:"):
        preset_config("cpu", flat_ratio=0.5)
    with pytest.raises(ConfigError, match="initial_epochs"):
        preset_config("cpu", epochs=4, initial_epochs=4)


def test_resnet18_layout():
    from htsr.ensembles.model import build_model

    m = build_model("resnet18", 64)
    n = sum(p.numel() for p in m.parameters())
    # the CIFAR ResNet-18 (kuangliu/pytorch-cifar, 3 input channels) has 11,173,962 parameters; a 1-channel
    # stem has 2 * 9 * 64 = 1,152 fewer
    assert n == 11_173_962 - 1_152
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_loader_is_a_function_of_seed_and_epoch():
    from htsr.ensembles.model import EpochLoader

    x = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 1, 4, 4).contiguous()
    y = torch.arange(20)
    a, b = EpochLoader(x, y, 8, seed=3), EpochLoader(x, y, 8, seed=3)
    a.epoch = b.epoch = 2
    assert [t[1].tolist() for t in a] == [t[1].tolist() for t in b]
    b.epoch = 3
    assert [t[1].tolist() for t in a] != [t[1].tolist() for t in b]
    aug = EpochLoader(x, y, 20, seed=0, augment=True, mask=torch.ones(20, dtype=torch.bool))
    xb, yb, mb = next(iter(aug))
    assert xb.shape == (20, 1, 4, 4) and mb.all()
    # a crop of a constant image keeps its value or pads with zeros
    assert all(set(xb[i].unique().tolist()) <= {0.0, float(yb[i])} for i in range(20))
