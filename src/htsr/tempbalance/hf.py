"""Hugging Face ``Trainer`` integration: the EMNLP'24 Model Balancing recipe as an optimizer/scheduler pair.

::

    from htsr.tempbalance.hf import TempBalanceHFCallback, tempbalance_optimizers

    opt, sched = tempbalance_optimizers(model, args, train_size=len(train_ds))
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, optimizers=(opt, sched),
                      callbacks=[TempBalanceHFCallback(sched)])
    trainer.train()

``tempbalance_optimizers`` builds AdamW with Hugging Face's own weight-decay split (decay on weight matrices,
none on biases and LayerNorms), wraps it in :class:`~htsr.tempbalance.scheduler.TempBalance` with the
Trainer's own schedule (``args.lr_scheduler_type``, warmup from ``args``) as the base schedule, and returns the
TempBalance object as the Trainer's ``lr_scheduler``: the Trainer calls its ``step()`` after every optimizer
step, so the rates follow the warmup/decay schedule times each block's multiplier at every step, and the
metric is recomputed every ``interval`` steps, as in the reference (``esd_interval``). The Trainer saves and
restores the scheduler's ``state_dict()`` with its checkpoints.

Defaults are the reference's GLUE recipe (:data:`~htsr.tempbalance.config.EMNLP24`): ``unit="block"``
(block-averaged alpha), ``mapping="sigmoid"`` (T = 10, s_min = s_max = 1), alpha with xmin at index N / 1.5, every
Linear with >= 50 eigenvalues, the last layer (classifier) left at the base rate, TempBalance active during warmup,
and the reference's recomputation interval: every 100 optimizer steps, but at least about ten times per epoch
(``min(100, max(1, steps_per_epoch // 10))``), so that on a small data set the multipliers do update.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.tempbalance.config import EMNLP24, TempBalanceConfig, resolve
from htsr.tempbalance.scheduler import TempBalance

#: The EMNLP'24 GLUE defaults as a dict (the fields of :data:`~htsr.tempbalance.config.EMNLP24`).
EMNLP24_DEFAULTS: dict[str, Any] = EMNLP24.to_dict()


def hf_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The Trainer's two groups: ``weight_decay`` on the parameters ``Trainer.get_decay_parameter_names``
    selects (not biases, not LayerNorm/RMSNorm), 0 on the rest; frozen parameters left out."""
    from transformers.trainer_pt_utils import get_parameter_names

    forbidden = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [nn.LayerNorm], forbidden))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def updates_per_epoch(args: Any, train_size: int, world_size: int = 1) -> int:
    """Optimizer steps per epoch: ceil(batches / gradient_accumulation_steps) over ``train_size`` examples."""
    if train_size < 1:
        raise ConfigError(f"train_size must be >= 1, got {train_size}")
    batch = args.per_device_train_batch_size * max(1, world_size)
    batches = math.ceil(train_size / batch) if not args.dataloader_drop_last else train_size // batch
    return max(1, math.ceil(batches / args.gradient_accumulation_steps))


def training_steps(args: Any, train_size: int, world_size: int = 1) -> int:
    """Optimizer steps the Trainer will take: ``args.max_steps`` if > 0, else epochs x ceil(batches /
    gradient_accumulation_steps)."""
    if getattr(args, "max_steps", -1) and args.max_steps > 0:
        return int(args.max_steps)
    return int(math.ceil(args.num_train_epochs * updates_per_epoch(args, train_size, world_size)))


def capped_interval(interval: int, steps_per_epoch: int | None) -> int:
    """The reference's recomputation interval: ``min(interval, max(1, steps_per_epoch // 10))`` (about ten
    recomputations per epoch at least); ``interval`` unchanged when the epoch length is unknown."""
    if steps_per_epoch is None:
        return interval
    return min(interval, max(1, int(steps_per_epoch) // 10))


def tempbalance_optimizers(model: nn.Module, args: Any, *, num_training_steps: int | None = None,
                           train_size: int | None = None, config: TempBalanceConfig | dict[str, Any] | None = None,
                           **settings: Any) -> tuple[torch.optim.Optimizer, TempBalance]:
    """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``: AdamW from ``args`` (learning_rate, betas,
    eps, weight_decay) with the Trainer's decay split, driven by :class:`TempBalance` over the Trainer's own
    schedule. Give ``num_training_steps`` or ``train_size`` (number of training examples).

    ``config`` / ``settings`` override :data:`~htsr.tempbalance.config.EMNLP24` (e.g. ``s_min=1.25,
    s_max=1.25``); a :class:`TempBalanceConfig` given is used as is. Otherwise, unless ``interval`` is given, it
    is the recipe's 100 steps capped at a tenth of an epoch as in the reference (the epoch length comes from
    ``train_size``, or from ``num_training_steps`` and ``args.num_train_epochs`` when ``args.max_steps`` is not
    set)."""
    from transformers import get_scheduler

    per_epoch: int | None = None
    if train_size is not None:
        per_epoch = updates_per_epoch(args, train_size)
    if num_training_steps is None:
        if train_size is None:
            raise ConfigError("give num_training_steps or train_size (the number of training examples)")
        num_training_steps = training_steps(args, train_size)
    if num_training_steps < 1:
        raise ConfigError(f"num_training_steps must be >= 1, got {num_training_steps}")
    if per_epoch is None and not (getattr(args, "max_steps", -1) and args.max_steps > 0) \
            and args.num_train_epochs > 0:
        per_epoch = max(1, math.ceil(num_training_steps / args.num_train_epochs))
    cfg = resolve(config, settings, base=EMNLP24)
    explicit = "interval" in settings or isinstance(config, TempBalanceConfig) or \
        (isinstance(config, dict) and "interval" in config)
    if not explicit:
        cfg = cfg.replace(interval=capped_interval(cfg.interval, per_epoch))
    opt = torch.optim.AdamW(hf_decay_groups(model, args.weight_decay), lr=args.learning_rate,
                            betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    warmup = args.get_warmup_steps(num_training_steps)
    kwargs = dict(getattr(args, "lr_scheduler_kwargs", None) or {})

    def base(o: torch.optim.Optimizer) -> Any:
        return get_scheduler(args.lr_scheduler_type, o, num_warmup_steps=warmup,
                             num_training_steps=num_training_steps, scheduler_specific_kwargs=kwargs)

    return opt, TempBalance(model, opt, base_scheduler=base, config=cfg)


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class TempBalanceHFCallback(_callback_base()):  # type: ignore[misc]
    """Adds TempBalance's state to the Trainer's logs at every logging step: ``tb_updates``, ``tb_mean_value``
    (mean metric over tuned units), ``tb_min_mult``/``tb_max_mult`` and ``tb_time_s`` (time spent recomputing);
    the per-unit trajectory stays in ``scheduler.history``."""

    def __init__(self, scheduler: TempBalance) -> None:
        if not isinstance(scheduler, TempBalance):
            raise ConfigError(f"expected a TempBalance scheduler, got {type(scheduler).__name__}")
        self.tb = scheduler

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        entry = {"tb_updates": self.tb.n_updates, **self.tb.summary()}
        if logs is not None:
            logs.update(entry)
        if state.log_history:
            state.log_history[-1].update(entry)
