"""Every TinyMem setting, stated once: the data, training, fine-tuning, regularizer and unlearning configs.

Each mitigation is a :class:`~htsr.config.Config` subclass registered by name (as peft's ``PeftType`` ->
``*Config`` mapping): :data:`REGULARIZERS` (train-time), :data:`FINETUNING`, :data:`UNLEARNING` (post-hoc).
Its field defaults are the defaults, wherever the method is called from (``unlearn()``, ``make_regularizer()``,
``tinymem mitigate``, ``tinymem compare``); unknown keys and out-of-range values are
:class:`~htsr.errors.ConfigError` naming the valid ones, raised when the config is built (before any training).

Defaults are the reference's (TinyMem, Sakarvadia et al. 2025, `/work/shared/research/methods_mem_phish_htgd.md`
section 1), except where a field's comment says otherwise. Two that the reference states in more than one way:

* ``ig_steps`` (Integrated Gradients) is 20: the reference's ``ig_full_data`` hard-codes 20 steps, the value the
  method's runs used; its sweep grid {1, 10, 20} is a grid, not a default. (The comparison used to default to 10
  while ``unlearn()`` defaulted to 20; the comparison's 10 is now a named override, :data:`COMPARISON_OVERRIDES`.)
* ``loss_weighting`` (BalancedSubnet) is the reference script's default 0.05; the paper's best toy run used 0.7,
  which the comparison uses (again a named override).

The ``ratio`` defaults (the fraction of neurons / weights an unlearning method changes) are values from the
reference's sweep grid that its best toy runs used: 0.05 for the neuron methods, 1e-3 for Greedy, 0.01 for the
other weight methods, 0.3 for the Subnet methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from htsr.config import Config, Registry, check_choice, check_positive_int, check_range
from htsr.memorization.errors import MemorizationError

__all__ = [
    "ARTIFACTS", "COMPARISON_OVERRIDES", "FINETUNING", "REGULARIZERS", "TASKS", "UNLEARNING", "ActivationsConfig",
    "BalancedSubnetConfig", "DurableAggConfig", "DurableConfig", "ExampleTiedDropoutConfig", "FinetuneConfig",
    "GreedyConfig", "HardConcreteConfig", "IntegratedGradientsConfig", "LossTruncationConfig", "MitigationConfig",
    "RegularizerConfig", "SecondOrderConfig", "SlimmingConfig", "SpectralNormConfig", "SubnetConfig",
    "TinyMemConfig", "TrainConfig", "UnlearnConfig", "ZeroOutConfig", "check_fractions", "check_prompt",
    "mitigation_config",
]

TASKS = ("increment", "mult")
#: The reference's prompt length (tokens before the checked continuation).
REFERENCE_PROMPT_LEN = 50
ARTIFACTS = ("noise", "backdoor")


# ------------------------------------------------------------------ data
def check_fractions(noise_p: float, backdoor_test_frac: float) -> None:
    """A clear error unless ``0 < noise_p < 0.5`` and ``0 < backdoor_test_frac < 1``."""
    if not 0 < noise_p < 0.5:
        raise MemorizationError(f"noise_p must be in (0, 0.5), got {noise_p}")
    if not 0 < backdoor_test_frac < 1:
        raise MemorizationError(f"backdoor_test_frac must be in (0, 1), got {backdoor_test_frac}")


def check_prompt(prompt_len: int, k: int, max_ctx: int) -> None:
    """A clear error unless ``0 < prompt_len`` and ``prompt_len + k <= max_ctx`` (the checked window fits)."""
    if prompt_len < 1 or k < 1:
        raise MemorizationError(f"prompt_len and k must be >= 1, got prompt_len={prompt_len}, k={k}")
    if prompt_len >= max_ctx:
        raise MemorizationError(f"prompt length {prompt_len} is not shorter than the sequence ({max_ctx} tokens); "
                                "expected prompt_len < max_ctx")
    if prompt_len + k > max_ctx:
        raise MemorizationError(f"prompt_len + k = {prompt_len + k} exceeds the sequence length {max_ctx}; the "
                                "checked continuation must fit in the sequence")


@dataclass(frozen=True)
class TinyMemConfig(Config):
    """Every setting of the math test-bed (defaults: the reference's; see ``data.PRESETS`` for the CPU size)."""

    label: ClassVar[str] = "the TinyMem data"

    task: Literal["increment", "mult"] = "increment"
    artifact: Literal["noise", "backdoor"] = "noise"
    main_k: int = 7
    aux_ks: tuple[int, ...] = (2, 3, 4, 5)
    n_main: int = 20000
    n_aux: int = 3000
    n_test: int = 1000
    n_noise: int = 1000
    length: int = 20
    max_ctx: int = 150
    prompt_len: int = 50
    k: int = 50
    noise_p: float = 0.05
    dup: tuple[int, ...] | None = None
    trigger: str | None = None
    backdoor_test_frac: float = 0.1
    seed: int = 0
    data_seed: int = 598

    @property
    def trigger_text(self) -> str:
        return self.trigger if self.trigger is not None else str(100 + self.seed)

    def validate(self) -> None:
        check_positive_int("length", self.length, 2)
        check_positive_int("main_k", self.main_k)
        check_positive_int("seed", self.seed, 0)
        check_positive_int("data_seed", self.data_seed, 0)
        check_prompt(self.prompt_len, self.k, self.max_ctx)
        if self.n_test < 1 or self.n_main <= self.n_test or (self.aux_ks and self.n_aux <= self.n_test):
            raise MemorizationError(f"each task needs more sequences than n_test={self.n_test} (n_main={self.n_main}, "
                                    f"n_aux={self.n_aux})")
        if self.artifact == "noise" and not 0 < self.n_noise < self.n_main - self.n_test:
            raise MemorizationError(f"n_noise must be in (0, {self.n_main - self.n_test}) (the main training set), "
                                    f"got {self.n_noise}")
        check_fractions(self.noise_p, self.backdoor_test_frac)
        if self.dup is not None and (not self.dup or min(self.dup) < 1 or len(self.dup) > self.n_noise):
            raise MemorizationError(f"dup must list repeat counts >= 1 (at most n_noise groups), got {self.dup}")
        if not self.trigger_text.isdigit():
            raise MemorizationError(f"the math backdoor trigger must be a digit string, got {self.trigger_text!r}")


@dataclass(frozen=True)
class TrainConfig(Config):
    """How the test-bed model is built and trained (the reference's AdamW: lr 1e-3, weight decay 0.1, betas
    (0.9, 0.98)). ``epochs``/``batch_size`` None: the data preset's (the paper: 3500 epochs for noise, 500 for
    backdoor, batch 128; presets "cpu"/"tiny": 10/3 epochs, batch 32)."""

    label: ClassVar[str] = "training"

    layers: int = 2
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 1e-3

    def validate(self) -> None:
        check_positive_int("layers", self.layers)
        if self.layers > 64:
            raise MemorizationError(f"layers must be in [1, 64], got {self.layers}")
        if self.epochs is not None:
            check_positive_int("epochs", self.epochs)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0, lo_open=True)


# ------------------------------------------------------------------ mitigations
@dataclass(frozen=True)
class MitigationConfig(Config):
    """Base of every mitigation's config; ``method`` is the registered name, ``family`` its kind."""

    method: ClassVar[str] = ""
    family: ClassVar[str] = ""


REGULARIZERS: Registry[type[RegularizerConfig]] = Registry("regularizer")
FINETUNING: Registry[type[FinetuneConfig]] = Registry("fine-tuning method")
UNLEARNING: Registry[type[UnlearnConfig]] = Registry("unlearning method")


def _register(registry: Registry, name: str):
    def deco(cls):
        cls.method = name
        cls.label = name
        return registry.register(name)(cls)

    return deco


@dataclass(frozen=True)
class RegularizerConfig(MitigationConfig):
    """A train-time regularizer: the model is retrained from scratch with it."""

    family: ClassVar[str] = "regularizer"


@_register(REGULARIZERS, "spectral_norm")
@dataclass(frozen=True)
class SpectralNormConfig(RegularizerConfig):
    """Loss += (lam / 2) * sum of the blocks' largest singular values (reference grid {0.001, 0.01, 0.1})."""

    lam: float = 0.01

    def validate(self) -> None:
        check_range("lam", self.lam, 0, lo_open=True)


@_register(REGULARIZERS, "loss_truncation")
@dataclass(frozen=True)
class LossTruncationConfig(RegularizerConfig):
    """Drop sequences whose loss is at or above the running (1 - dropc) percentile (grid {0.01, 0.05, 0.1}).
    ``window``/``recompute``/``min_count`` None: the reference's 10,000 samples, capped at half an epoch of the
    training set (with 10k, truncation would never start on a smaller set)."""

    dropc: float = 0.05
    window: int | None = None
    recompute: int | None = None
    min_count: int | None = None

    def validate(self) -> None:
        check_range("dropc", self.dropc, 0, 1, lo_open=True, hi_open=True)
        for name in ("window", "recompute"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.min_count is not None:
            check_positive_int("min_count", self.min_count, 0)


@_register(REGULARIZERS, "example_tied_dropout")
@dataclass(frozen=True)
class ExampleTiedDropoutConfig(RegularizerConfig):
    """Example-tied dropout: ``p_fixed`` of the channels always kept, the rest kept with ``p_mem`` per example."""

    p_fixed: float = 0.2
    p_mem: float = 0.1

    def validate(self) -> None:
        check_range("p_fixed", self.p_fixed, 0, 1, lo_open=True, hi_open=True)
        check_range("p_mem", self.p_mem, 0, 1, lo_open=True)


@dataclass(frozen=True)
class FinetuneConfig(MitigationConfig):
    """Resume the trained model and its AdamW state for ``epochs`` more epochs at ``lr`` (reference: 5 epochs,
    lr 1e-3, batch 128); ``batch_size`` None: the training run's. The data set is the method's ``variant``."""

    family: ClassVar[str] = "fine-tuning"
    variant: ClassVar[str] = ""

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int | None = None

    def validate(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_range("lr", self.lr, 0, lo_open=True)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)


@_register(FINETUNING, "finetune_clean")
@dataclass(frozen=True)
class FinetuneCleanConfig(FinetuneConfig):
    """Fine-tune on the clean versions of the artifact sequences."""

    variant: ClassVar[str] = "clean"


@_register(FINETUNING, "finetune_extra")
@dataclass(frozen=True)
class FinetuneExtraConfig(FinetuneConfig):
    """Fine-tune on the training data without the artifact sequences (the retain set)."""

    variant: ClassVar[str] = "extra"


@_register(FINETUNING, "finetune_both")
@dataclass(frozen=True)
class FinetuneBothConfig(FinetuneConfig):
    """Fine-tune on the union of the clean artifact versions and the retain set."""

    variant: ClassVar[str] = "both"


@dataclass(frozen=True)
class UnlearnConfig(MitigationConfig):
    """A post-hoc unlearning method: ``ratio`` is the fraction of neurons per layer (neuron methods), of
    parameters (Greedy: ratio x #params iterations) or of weight entries (the others) changed, in (0, 1)."""

    family: ClassVar[str] = "unlearning"
    kind: ClassVar[str] = "neuron"  # "neuron" or "weight": what the report lists
    needs_retain: ClassVar[bool] = False

    ratio: float = 0.05

    def validate(self) -> None:
        check_range("ratio", self.ratio, 0, 1, lo_open=True, hi_open=True)
        for name in ("epochs", "batch_size", "ig_steps", "block_size", "num_grads"):
            if hasattr(self, name):
                check_positive_int(name, getattr(self, name))
        for name in ("lr", "lambda_l1", "lambda_l0", "stop_l1", "stop_l0", "damp"):
            if hasattr(self, name):
                check_range(name, getattr(self, name), 0, lo_open=True)
        if getattr(self, "prompt_len", None) is not None:
            check_positive_int("prompt_len", self.prompt_len)


@_register(UNLEARNING, "zero_out")
@dataclass(frozen=True)
class ZeroOutConfig(UnlearnConfig):
    """Score = CE(M) with the neuron zeroed - CE(M)."""


@_register(UNLEARNING, "activations")
@dataclass(frozen=True)
class ActivationsConfig(UnlearnConfig):
    """Score = |mean activation over M after the prompt| x the neuron's output-weight norm. ``prompt_len`` None:
    the test-bed's prompt length (the comparison), or the reference's 50 when ``unlearn()`` is called alone."""

    prompt_len: int | None = None


@_register(UNLEARNING, "slimming")
@dataclass(frozen=True)
class SlimmingConfig(UnlearnConfig):
    """Learned activation coefficients in [0, 1] with an L1 penalty (Adam)."""

    epochs: int = 10
    lr: float = 0.1
    lambda_l1: float = 1000.0
    stop_l1: float = 0.1
    batch_size: int = 64


@_register(UNLEARNING, "hard_concrete")
@dataclass(frozen=True)
class HardConcreteConfig(UnlearnConfig):
    """Hard-concrete L0 gates on the neurons (Adam)."""

    epochs: int = 10
    lr: float = 0.1
    lambda_l0: float = 1000.0
    stop_l0: float = 0.1
    init_p: float = 0.5
    batch_size: int = 64

    def validate(self) -> None:
        super().validate()
        check_range("init_p", self.init_p, 0, 1, lo_open=True, hi_open=True)


@_register(UNLEARNING, "integrated_gradients")
@dataclass(frozen=True)
class IntegratedGradientsConfig(UnlearnConfig):
    """Integrated-gradients attribution of each neuron to the memorized next tokens (``ig_steps``: see the
    module docstring for why 20; ``prompt_len``: as :class:`ActivationsConfig`)."""

    prompt_len: int | None = None
    ig_steps: int = 20


@_register(UNLEARNING, "greedy")
@dataclass(frozen=True)
class GreedyConfig(UnlearnConfig):
    """Zero the single entry with the largest first-order gain, ratio x #params times (``scope``: every
    parameter, as the reference, or the MLP tensors; ``max_iters`` caps the iterations)."""

    kind: ClassVar[str] = "weight"
    needs_retain: ClassVar[bool] = True

    ratio: float = 1e-3
    batch_size: int = 64
    scope: Literal["all", "mlp"] = "all"
    max_iters: int | None = None

    def validate(self) -> None:
        super().validate()
        check_choice("scope", self.scope, ("all", "mlp"))
        if self.max_iters is not None:
            check_positive_int("max_iters", self.max_iters)


@_register(UNLEARNING, "durable")
@dataclass(frozen=True)
class DurableConfig(UnlearnConfig):
    """Zero the top-ratio entries by |accumulated gradient| in each MLP tensor."""

    kind: ClassVar[str] = "weight"

    ratio: float = 0.01
    batch_size: int = 64


@_register(UNLEARNING, "durable_agg")
@dataclass(frozen=True)
class DurableAggConfig(DurableConfig):
    """Durable with the top-ratio selection made globally over every parameter."""


@_register(UNLEARNING, "second_order")
@dataclass(frozen=True)
class SecondOrderConfig(UnlearnConfig):
    """OBS saliency from a block-diagonal empirical Fisher inverse (block 50, damping 1e-7, 512 gradients)."""

    kind: ClassVar[str] = "weight"

    ratio: float = 0.01
    block_size: int = 50
    damp: float = 1e-7
    num_grads: int = 512
    batch_size: int = 1


@_register(UNLEARNING, "subnet")
@dataclass(frozen=True)
class SubnetConfig(UnlearnConfig):
    """Edge-popup mask of the MLP weights trained to raise CE(M) (SGD lr 0.1, momentum 0.9, wd 5e-4)."""

    kind: ClassVar[str] = "weight"

    ratio: float = 0.3
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64

    def validate(self) -> None:
        super().validate()
        check_range("momentum", self.momentum, 0, 1)
        check_range("weight_decay", self.weight_decay, 0)


@_register(UNLEARNING, "balanced_subnet")
@dataclass(frozen=True)
class BalancedSubnetConfig(SubnetConfig):
    """Subnet on M ∪ R: loss = -(1 - a) CE(M) + a CE(R), a = ``loss_weighting``."""

    needs_retain: ClassVar[bool] = True

    loss_weighting: float = 0.05

    def validate(self) -> None:
        super().validate()
        check_range("loss_weighting", self.loss_weighting, 0, 1)


#: The comparison's settings that differ from the method defaults (``htsr tinymem compare``): fewer IG steps to
#: keep the CPU comparison in minutes (20 -> 10, a value of the reference's grid), and the paper's best toy
#: BalancedSubnet weighting (0.05 -> 0.7).
COMPARISON_OVERRIDES: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"ig_steps": 10},
    "balanced_subnet": {"loss_weighting": 0.7},
}


def mitigation_config(method: str, overrides: dict[str, Any] | None = None) -> MitigationConfig:
    """The config of any mitigation by name (regularizer, fine-tuning or unlearning), with ``overrides``."""
    for reg in (REGULARIZERS, FINETUNING, UNLEARNING):
        if method in reg:
            return reg.get(method).from_dict(overrides or {})
    names = [*REGULARIZERS.names(), *FINETUNING.names(), *UNLEARNING.names()]
    raise MemorizationError(f"unknown method {method!r}; expected one of {', '.join(names)}")
