"""The shared training loop on real data (scikit-learn digits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from htsr.errors import ConfigError
from htsr.training import Callback, TrainingError, evaluate, load_checkpoint, save_checkpoint, train


def _digits(n: int = 600, batch: int = 64, seed: int = 0):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:n] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[:n], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=g), (x, y)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _run(seed: int, epochs: int = 5):
    loader, (x, y) = _digits(seed=seed)
    model = _mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    res = train(model, loader, opt, epochs=epochs, eval_data=[(x, y)], progress=False)
    return model, res


def test_train_learns_and_history(torch_one_thread):
    model, res = _run(0)
    h = res.history
    assert list(h["epoch"]) == [0, 1, 2, 3, 4]
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    assert h["eval_accuracy"].iloc[-1] > 0.85
    assert res.state.step == 5 * math.ceil(600 / 64)


def test_seeded_runs_are_identical(torch_one_thread):
    m1, r1 = _run(3, epochs=2)
    m2, r2 = _run(3, epochs=2)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(r1.history["train_loss"], r2.history["train_loss"])


def test_max_steps_scheduler_and_callback_stop(torch_one_thread):
    loader, _ = _digits()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    seen = []

    class Stopper(Callback):
        def on_step_end(self, state, logs):
            seen.append(logs["loss"])
            if state.step == 5:
                state.stop = True

    res = train(model, loader, opt, epochs=None, max_steps=100, scheduler=sched, scheduler_interval="step",
                callbacks=[Stopper()], progress=False)
    assert res.state.step == 5 and len(seen) == 5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**5)
    res = train(model, loader, torch.optim.SGD(model.parameters(), lr=0.01), epochs=5, max_steps=3, progress=False)
    assert res.state.step == 3


def test_closure_protocol_calls_second_pass(torch_one_thread):
    loader, _ = _digits(n=128)
    model = _mlp()
    calls = []

    class TwoPass(torch.optim.SGD):
        needs_closure = True

        def step(self, closure=None):
            g1 = model[0].weight.grad.clone()
            loss = closure()
            calls.append((g1, model[0].weight.grad.clone(), float(loss)))
            return super().step()

    train(model, loader, TwoPass(model.parameters(), lr=0.1), epochs=1, progress=False)
    assert len(calls) == 2
    g1, g2, _ = calls[0]
    assert torch.allclose(g1, g2)  # same batch, same weights: same gradient


def test_nonfinite_loss_and_bad_config(torch_one_thread):
    loader, _ = _digits(n=64)
    model = _mlp()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss"):
        train(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    with pytest.raises(ConfigError, match="epochs"):
        train(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), epochs=0, progress=False)
    frozen = _mlp()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        train(frozen, loader, torch.optim.SGD(frozen.parameters(), lr=0.1), progress=False)
    with pytest.raises(TrainingError, match="no batch"):
        train(_mlp(), [], torch.optim.SGD(_mlp().parameters(), lr=0.1), progress=False)


def test_checkpoint_roundtrip_resumes_identically(tmp_path, torch_one_thread):
    x, y = load_digits(return_X_y=True)
    data = [(torch.tensor(x[i:i + 50] / 16.0, dtype=torch.float32), torch.tensor(y[i:i + 50])) for i in (0, 50, 100)]
    model = _mlp(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, data, opt, epochs=1, progress=False)
    save_checkpoint(tmp_path / "ck", model, opt, extra={"epoch": 1})
    model2 = _mlp(7)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    assert load_checkpoint(tmp_path / "ck", model2, opt2) == {"epoch": 1}
    train(model, data, opt, epochs=1, progress=False)
    train(model2, data, opt2, epochs=1, progress=False)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert evaluate(model, data)["loss"] == evaluate(model2, data)["loss"]


def test_seeded_loader_order_is_fixed_by_its_seed_and_leaves_the_global_rng_alone():
    from htsr.training import seeded_loader

    x, y = torch.arange(40.0).reshape(20, 2), torch.arange(20)
    state = torch.random.get_rng_state()
    a = [b[1].tolist() for b in seeded_loader(x, y, 6, seed=3)]
    b = [b[1].tolist() for b in seeded_loader(x, y, 6, seed=3)]
    c = [b[1].tolist() for b in seeded_loader(x, y, 6, seed=4)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a == b and a != c
    assert sorted(sum(a, [])) == list(range(20)) and [len(v) for v in a] == [6, 6, 6, 2]
    assert [v for batch in seeded_loader(x, y, 6, seed=3, shuffle=False) for v in batch[1].tolist()] == list(range(20))


def test_evaluate_gives_accuracy_for_sequence_classification_dict_batches():
    from transformers import BertConfig, BertForSequenceClassification

    from htsr.training import evaluate

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=3))
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 50, (6, 8), generator=g),
                "labels": torch.randint(0, 3, (6,), generator=g)} for _ in range(2)]
    res = evaluate(model, batches)
    model.eval()
    with torch.no_grad():
        want = sum(int((model(input_ids=b["input_ids"]).logits.argmax(-1) == b["labels"]).sum()) for b in batches)
    assert res["accuracy"] == want / 12 and res["loss"] > 0
