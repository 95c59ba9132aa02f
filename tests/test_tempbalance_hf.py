"""TempBalance inside a real Hugging Face Trainer run (tiny BERT from a random config, real KJV verses)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (pip install 'htsr[hf]')")


def _tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64, num_labels=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertForSequenceClassification(cfg)


class _Verses(torch.utils.data.Dataset):
    """Real KJV verses as byte-level token ids (mod vocab), labelled by testament."""

    def __init__(self, n: int = 32):
        from htsr.data.text import kjv_classification_split

        texts, labels, _, _, _ = kjv_classification_split(1.0, 0, label="testament", n_pool=n, n_test=2)
        self.items = [(torch.tensor([b % 200 for b in t.encode()[:32]] + [0] * max(0, 32 - len(t.encode()))),
                       int(y)) for t, y in zip(texts, labels, strict=True)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        ids, y = self.items[i]
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor(y)}


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=2,
                learning_rate=1e-3, warmup_steps=2, weight_decay=0.1, logging_steps=2, save_strategy="no",
                report_to=[], use_cpu=True, disable_tqdm=True, seed=0, data_seed=0)
    base.update(kw)
    return TrainingArguments(**base)


def test_trainer_runs_emnlp_recipe(tmp_path, torch_one_thread):
    from transformers import Trainer

    from htsr.tempbalance.hf import TempBalanceHFCallback, tempbalance_optimizers
    from htsr.tempbalance.scheduler import TempBalance

    model, ds = _tiny_bert(), _Verses(32)
    args = _args(tmp_path)
    # hidden 64 gives 64 eigenvalues per Linear: above the reference's 50
    opt, sched = tempbalance_optimizers(model, args, train_size=len(ds), interval=3)
    assert isinstance(sched, TempBalance)
    assert sched.units_ == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert "classifier" in sched.excluded_
    # the decay / no-decay split survives inside every block
    wds = sorted({(g["tb_unit"], g["weight_decay"]) for g in opt.param_groups}, key=str)
    assert ("bert.encoder.layer.0", 0.1) in wds and ("bert.encoder.layer.0", 0.0) in wds
    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, sched),
                      callbacks=[TempBalanceHFCallback(sched)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = trainer.train()
    steps = out.global_step
    assert steps == 8  # 32 examples / 8 per batch x 2 epochs
    assert sched.step_count == steps
    assert sched.n_updates == 1 + steps // 3  # at init, then every 3 steps
    # the base schedule is HF's linear decay, 0 at the end (lr = base x multiplier is checked mid-training below)
    for g in opt.param_groups:
        assert g["tb_base_lr"] == pytest.approx(0.0, abs=1e-12)
    # the history recorded block alphas and distinct multipliers, logs carry TB state
    h = sched.history
    assert set(h["unit"]) == set(sched.units_) and h["value"].notna().all()
    assert any("tb_mean_value" in r for r in trainer.state.log_history)
    assert all(math.isfinite(r["tb_time_s"]) for r in trainer.state.log_history if "tb_time_s" in r)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("bert.encoder.layer.0") for n in changed)


def test_trainer_lr_matches_block_multiplier_mid_training(tmp_path, torch_one_thread):
    """During warmup/decay the per-block rate is the HF schedule's value times the block multiplier."""
    from transformers import Trainer, TrainerCallback

    from htsr.tempbalance.hf import tempbalance_optimizers

    model, ds = _tiny_bert(1), _Verses(32)
    args = _args(tmp_path, num_train_epochs=1, warmup_steps=0, lr_scheduler_type="linear")
    opt, sched = tempbalance_optimizers(model, args, train_size=len(ds), interval=100)
    seen = []

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append({g["tb_unit"]: g["lr"] for g in opt.param_groups})

    Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, sched), callbacks=[Spy()]).train()
    total = 4
    for k, lrs in enumerate(seen, start=1):
        base = 1e-3 * (total - k) / total
        assert lrs[None] == pytest.approx(base)
        for u in sched.units_:
            assert lrs[u] == pytest.approx(base * sched.multipliers_[u])
    assert len({round(sched.multipliers_[u], 9) for u in sched.units_}) == 2


@pytest.mark.parametrize("n, batch, accum, expected", [
    (32, 8, 1, 1),        # 4 steps per epoch: max(1, 4 // 10) = 1, every step
    (2000, 8, 1, 25),     # 250 steps per epoch: 25, ten recomputations per epoch
    (2000, 8, 2, 12),     # 125 optimizer steps per epoch: 12
    (80000, 8, 1, 100),   # 10,000 steps per epoch: the recipe's 100
])
def test_default_interval_is_capped_at_ten_per_epoch(tmp_path, torch_one_thread, n, batch, accum, expected):
    """issue 20: the reference recomputes every min(esd_interval=100, max(1, steps_per_epoch // 10)) steps; without
    the cap a small data set never updates the multipliers."""
    from htsr.tempbalance.hf import tempbalance_optimizers

    args = _args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accum)
    per_epoch = math.ceil(math.ceil(n / batch) / accum)
    assert expected == min(100, max(1, per_epoch // 10))
    _, sched = tempbalance_optimizers(_tiny_bert(), args, train_size=n)
    assert sched.config.interval == expected
    # the same epoch length from num_training_steps and num_train_epochs (2)
    _, sched = tempbalance_optimizers(_tiny_bert(), args, num_training_steps=2 * per_epoch)
    assert sched.config.interval == expected
    # an explicit interval is honoured
    _, sched = tempbalance_optimizers(_tiny_bert(), args, train_size=n, interval=7)
    assert sched.config.interval == 7


def test_small_data_set_updates_the_multipliers_during_training(tmp_path, torch_one_thread):
    """32 examples, batch 8: 4 steps per epoch. With the default (capped) interval the metric is recomputed at every
    step, as the reference does; the uncapped 100 would never recompute in these 8 steps."""
    from transformers import Trainer

    from htsr.tempbalance.hf import tempbalance_optimizers

    model, ds = _tiny_bert(2), _Verses(32)
    args = _args(tmp_path)
    opt, sched = tempbalance_optimizers(model, args, train_size=len(ds))
    Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, sched)).train()
    assert sched.n_updates == 1 + 8
