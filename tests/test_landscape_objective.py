"""The landscape Objective's interfaces: torch criteria as loss functions (adapted in one place), name patterns
(globs and re:), the shared batch forward, and clear errors for what it cannot use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.landscape.hessian import top_eigenvalues
from htsr.landscape.objective import CriterionLoss, LandscapeError, Objective, as_model_loss, select_parameters

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    return model, (x, y)


def _exact_loss(model, batch):  # computed here, not by the Objective
    x, y = batch
    with torch.no_grad():
        logits = model(x)
        return float((torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]).mean())


@pytest.mark.parametrize("loss_fn", [None, nn.CrossEntropyLoss(), nn.functional.cross_entropy,
                                     lambda outputs, targets: nn.functional.cross_entropy(outputs, targets),
                                     lambda model, batch: nn.functional.cross_entropy(model(batch[0]), batch[1])],
                         ids=["default", "CrossEntropyLoss()", "F.cross_entropy", "lambda outputs, targets",
                              "lambda model, batch"])
def test_torch_criteria_and_model_losses_give_the_same_objective(case, loss_fn):
    model, batch = case
    obj = Objective(model, batch, loss_fn)
    assert obj.loss() == pytest.approx(_exact_loss(model, batch), rel=1e-12)
    ref = Objective(model, batch)
    v = torch.randn(obj.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(obj.hvp(v).numpy(), ref.hvp(v).numpy(), rtol=1e-10, atol=1e-12)
    assert top_eigenvalues(obj, 1).eigenvalues[0] == pytest.approx(top_eigenvalues(ref, 1).eigenvalues[0],
                                                                   rel=1e-8)


def test_criterion_detection_is_in_one_place():
    crit = nn.MSELoss()
    assert isinstance(as_model_loss(crit), CriterionLoss) and as_model_loss(crit).criterion is crit
    assert isinstance(as_model_loss(nn.functional.mse_loss), CriterionLoss)

    def mine(model, batch):
        return model(batch[0]).sum()

    assert as_model_loss(mine) is mine


def test_wrong_loss_signatures_are_clear_errors(case):
    model, batch = case
    with pytest.raises(LandscapeError, match=r"cannot be called with two arguments; expected loss_fn\(model, "
                                             r"batch\).*torch.nn.CrossEntropyLoss\(\)"):
        Objective(model, batch, lambda out: out.sum())
    with pytest.raises(LandscapeError, match="loss_fn must be callable"):
        Objective(model, batch, "cross_entropy")
    # a criterion whose parameter names do not say so is taken for (model, batch): the failure names both forms
    with pytest.raises(LandscapeError, match=r"loss_fn failed with TypeError.*expected loss_fn\(model, batch\)"):
        Objective(model, batch, lambda a, b: nn.functional.cross_entropy(a, b)).loss()
    with pytest.raises(LandscapeError, match="needs \\(inputs, targets\\) batches"):
        Objective(model, batch[0], nn.CrossEntropyLoss()).loss()
    with pytest.raises(LandscapeError, match="scalar"):
        Objective(model, batch, nn.CrossEntropyLoss(reduction="none")).loss()


def test_parameter_patterns_globs_and_regex(case):
    model, _ = case
    names = lambda sel: [n for n, _ in select_parameters(model, sel)]  # noqa: E731
    assert names(["0.*"]) == ["0.weight", "0.bias"]
    assert names("re:weight$") == ["0.weight", "2.weight"]
    assert names(["2.bias", "re:^0\\."]) == ["0.weight", "0.bias", "2.bias"]  # model order, no duplicates
    with pytest.raises(LandscapeError, match="'3.\\*' matches no parameter"):
        select_parameters(model, ["3.*"])
    with pytest.raises(ConfigError, match="invalid regular expression"):
        select_parameters(model, ["re:("])
