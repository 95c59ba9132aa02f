"""Settings of the MoE-LoRA adapter (:class:`MoLoraConfig`) and of a fine-tuning run (:class:`TrainConfig`), with
the ``cpu`` and ``paper`` presets.

Adapter defaults are the reference's (``peijunallin/alphalora`` @41cb6e2): rank 8, lora_alpha 16 (scaling 2),
dropout 0.05, top-2 routing where a layer has more than one expert, the balance loss off (its coefficient when on
is 0.001), the seven LLaMA/Mistral projections as targets.

Preset ``cpu`` (this 2-core machine; one run ~20 s on one thread): the packaged all-MiniLM-L6-v2 (6 blocks, the
six Linears of each targeted), an expert budget of 24 (4 per block on average), rank 4, lora_alpha 8, max length
32, 256 training texts, 2 epochs, batch 16, AdamW lr 3e-3 (picked from 1e-3, 3e-3, 1e-2 with the uniform
variant, seed 0, on kjv_genre and fortunes_topic; 1e-2 diverged to chance) with the head trained from scratch,
evaluated on 240 held-out texts.

Preset ``paper`` (a GPU and a local 7B decoder, ``--model DIR``): the reference's hyper-parameters: budget 160,
beta 2.5, rank 8, lora_alpha 16, dropout 0.05, lr 3e-4, 20 epochs, batch 128 (the reference accumulates 16
micro-batches of 8; here one batch of 128), 100 warm-up steps, max length 256, the seven projections.

The plain-LoRA variants (``lora_uniform``, ``lora_alpha``) use rank ``lora_rank`` (0: ``budget * r / blocks``, the
parameter count of the MoE variants' experts) per layer on average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from htsr.config import Config, Registry, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: BERT/MiniLM: query, key, value, attention.output.dense, intermediate.dense, output.dense
BERT_TARGETS = ("query", "key", "value", "dense")
TASKS = ("kjv_genre", "kjv_testament", "fortunes_topic")
#: what a training run allocates: the four expert allocations, and plain LoRA at uniform or AlphaLoRA ranks
VARIANTS = ("uniform", "mola_increasing", "mola_decreasing", "alphalora", "lora_uniform", "lora_alpha")


@dataclass(frozen=True)
class MoLoraConfig(Config):
    """One MoE-LoRA adapter: which layers, how many experts each, and the LoRA settings of every expert."""

    label = "MoE-LoRA config"

    target_modules: tuple[str, ...] = LLAMA_TARGETS  # PEFT rule: a name equal to, or ending in "." + target;
    # globs and re:REGEX also work. Only linear-like layers inside the transformer blocks are targeted.
    experts: tuple[int, ...] = (1,)  # experts per block (one value: every block)
    top_k: tuple[int, ...] = ()  # experts per token per block; () = 2 where a block has > 1 expert, else 1
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    balance_loss: float = 0.0  # Switch-style load-balancing coefficient (0 = off, the reference's default)
    init_lora_weights: bool = True  # True: B = 0 (the adapter starts as the identity); False: B random too
    modules_to_save: tuple[str, ...] = ()  # other modules trained and saved with the adapter (a task head)

    def validate(self) -> None:
        if not self.target_modules:
            raise ConfigError("target_modules is empty; expected layer names such as q_proj or query")
        if not self.experts:
            raise ConfigError("experts is empty; expected experts per block (one value for every block)")
        for e in self.experts:
            check_positive_int("experts", e)
        for k in self.top_k:
            check_positive_int("top_k", k)
        check_positive_int("r", self.r)
        check_range("lora_alpha", self.lora_alpha, 0, lo_open=True)
        check_range("lora_dropout", self.lora_dropout, 0, 1, hi_open=True)
        check_range("balance_loss", self.balance_loss, 0)

    @property
    def scaling(self) -> float:
        return float(self.lora_alpha) / self.r

    def per_block(self, n_blocks: int) -> tuple[list[int], list[int]]:
        """(experts, top_k) for each of ``n_blocks`` blocks, or a :class:`ConfigError` for a length mismatch."""
        from htsr.lora.allocation import top_k

        e = list(self.experts) * n_blocks if len(self.experts) == 1 else list(self.experts)
        if len(e) != n_blocks:
            raise ConfigError(f"experts has {len(self.experts)} values but the model has {n_blocks} blocks; "
                              "expected one value per block (or a single value)")
        if not self.top_k:
            k = top_k(e).tolist()
        else:
            k = list(self.top_k) * n_blocks if len(self.top_k) == 1 else list(self.top_k)
            if len(k) != n_blocks:
                raise ConfigError(f"top_k has {len(self.top_k)} values but the model has {n_blocks} blocks")
        bad = [i for i in range(n_blocks) if k[i] > e[i]]
        if bad:
            raise ConfigError(f"top_k {k[bad[0]]} exceeds the {e[bad[0]]} expert(s) of block {bad[0]}")
        return [int(x) for x in e], [int(x) for x in k]


@dataclass(frozen=True)
class TrainConfig(Config):
    """A fine-tuning run: task, allocation and optimisation (defaults: the ``cpu`` preset)."""

    label = "lora train config"

    model: str | None = None  # HF model directory (None: the packaged all-MiniLM-L6-v2)
    task: str = "kjv_genre"
    variant: str = "alphalora"
    budget: int = 24  # total experts (MoE variants)
    lora_rank: int = 0  # plain-LoRA variants: mean rank per layer (0 = budget * r / blocks: equal parameters)
    beta: float = 2.5
    rounding: str = "largest_remainder"
    target_modules: tuple[str, ...] = BERT_TARGETS
    r: int = 4
    lora_alpha: float = 8.0
    lora_dropout: float = 0.05
    balance_loss: float = 0.0
    # data
    n_train: int = 256  # training texts, balanced over classes
    n_test: int = 240  # held-out texts, balanced over classes
    max_length: int = 32
    # optimisation
    epochs: int = 2
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    head_dropout: float = 0.1
    threads: int = 1
    device: str = "cpu"

    def validate(self) -> None:
        check_choice("task", self.task, TASKS)
        check_choice("variant", self.variant, VARIANTS)
        check_positive_int("budget", self.budget)
        check_range("beta", self.beta, 0, lo_open=True)
        check_choice("rounding", self.rounding, ("largest_remainder", "reference"))
        if not self.target_modules:
            raise ConfigError("target_modules is empty")
        check_positive_int("r", self.r)
        check_positive_int("lora_rank", self.lora_rank, 0)
        check_range("lora_alpha", self.lora_alpha, 0, lo_open=True)
        check_range("lora_dropout", self.lora_dropout, 0, 1, hi_open=True)
        check_range("balance_loss", self.balance_loss, 0)
        check_positive_int("n_train", self.n_train, 2)
        check_positive_int("n_test", self.n_test, 2)
        check_positive_int("max_length", self.max_length, 2)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_positive_int("warmup_steps", self.warmup_steps, 0)
        check_range("head_dropout", self.head_dropout, 0, 1, hi_open=True)
        check_positive_int("threads", self.threads)

    def adapter(self, experts: tuple[int, ...] = (1,), modules_to_save: tuple[str, ...] = ("classifier",)
                ) -> MoLoraConfig:
        """The adapter config of this run for an allocation of ``experts`` per block."""
        return MoLoraConfig(target_modules=self.target_modules, experts=tuple(experts), r=self.r,
                            lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                            balance_loss=self.balance_loss, modules_to_save=modules_to_save)


PRESETS: Registry[dict[str, Any]] = Registry("preset")
PRESETS.add("cpu", {})
PRESETS.add("paper", {
    "budget": 160, "beta": 2.5, "target_modules": LLAMA_TARGETS, "r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05,
    "n_train": 4000, "n_test": 1000, "max_length": 256, "epochs": 20, "batch_size": 128,
    "lr": 3e-4, "warmup_steps": 100, "device": "cuda",
})


def preset_config(name: str = "cpu", overrides: dict[str, Any] | None = None, **kw: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a preset name plus field overrides (unknown keys are errors)."""
    base = dict(PRESETS.get(name))
    base.update(overrides or {})
    base.update(kw)
    return TrainConfig.from_dict(base)
