"""Fine-tune a sentence classifier with an allocation of LoRA experts (or ranks), and the comparison sweep.

:func:`run` trains one (task, variant, seed): the classifier on the encoder (default the packaged
all-MiniLM-L6-v2, :func:`htsr.models.text.load_minilm_classifier`), the adapters injected by
:class:`~htsr.lora.model.MoLoraModel` (the MoE variants: ``uniform``, ``mola_increasing``, ``mola_decreasing``,
``alphalora``, all at ``budget`` experts) or by PEFT with :func:`~htsr.lora.model.peft_rank_config` (the plain
LoRA variants ``lora_uniform`` and ``lora_alpha``, at the same total rank), the classification head trained
and saved with them; training through :func:`htsr.training.train`. :func:`compare` runs the grid through
:func:`htsr.experiments.run_sweep` (resumable, any executor) and :func:`summarize` gives mean, std and the
paired std of the difference to the variant's baseline (``uniform`` for the MoE variants, ``lora_uniform`` for
``lora_alpha``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from htsr.errors import ConfigError
from htsr.lora.config import TrainConfig

MOE_VARIANTS = ("uniform", "mola_increasing", "mola_decreasing", "alphalora")
LORA_VARIANTS = ("lora_uniform", "lora_alpha")
BASELINE = {"mola_increasing": "uniform", "mola_decreasing": "uniform", "alphalora": "uniform",
            "lora_alpha": "lora_uniform"}


@functools.lru_cache(maxsize=4)
def _alphas(model: str | None, targets: tuple[str, ...]) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Per-block mean alpha of the targeted matrices of the pretrained encoder (cached: the same for every seed)."""
    from htsr.lora.model import layer_alphas
    from htsr.models.text import load_minilm_classifier

    clf, _ = load_minilm_classifier(2, path=model)
    alphas, blocks, _ = layer_alphas(clf, targets)
    return tuple(float(a) for a in alphas), tuple(blocks)


def plan(cfg: TrainConfig) -> dict[str, Any]:
    """The allocation of ``cfg.variant``: per block alpha, experts and top-k (MoE) or rank (plain LoRA)."""
    from htsr.lora.allocation import allocation, rank_allocation, top_k

    alphas, blocks = _alphas(cfg.model, tuple(cfg.target_modules))
    n = len(blocks)
    out: dict[str, Any] = {"variant": cfg.variant, "blocks": list(blocks), "alpha": list(alphas)}
    if cfg.variant in MOE_VARIANTS:
        e = allocation(cfg.variant, cfg.budget, metrics=alphas, beta=cfg.beta, rounding=cfg.rounding)
        out.update(experts=e.tolist(), top_k=top_k(e).tolist())
    else:
        rank = cfg.lora_rank or max(1, (cfg.budget * cfg.r) // n)
        if cfg.variant == "lora_uniform":
            ranks = [rank] * n
        else:
            ranks = rank_allocation(alphas, rank, cfg.beta, rounding=cfg.rounding).tolist()
        out.update(ranks=ranks, rank=rank)
    return out


def _accuracy(model: Any, data: Any, device: Any) -> float:
    import torch

    from htsr.nn import eval_mode
    from htsr.training.loop import to_device

    correct = total = 0
    with torch.no_grad(), eval_mode(model):
        for batch in data:
            batch = to_device(batch, device)
            labels = batch.pop("labels")
            logits = model(**batch).logits
            correct += int((logits.argmax(-1) == labels).sum())
            total += int(labels.numel())
    return correct / total


def run(cfg: TrainConfig, seed: int = 0, out_dir: str | Path | None = None, *, progress: bool | None = None,
        overwrite: bool = False) -> dict[str, Any]:
    """Train one (task, variant, seed) and return its metrics; with ``out_dir`` the adapters (and the head) are
    saved there (MoE: ``adapter_config.json`` + ``adapter_model.safetensors``; plain LoRA: PEFT's own files)."""
    import torch

    from htsr.data.text import TokenizedBatches
    from htsr.lora.model import MoLoraModel, peft_rank_config
    from htsr.lora.tasks import task_split
    from htsr.models.text import load_minilm_classifier
    from htsr.training import train

    if out_dir is not None:
        from htsr.io import check_replace_dir

        check_replace_dir(out_dir, overwrite=overwrite)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)  # dropout (the adapters' and the head's) draws from the global generator
    device = torch.device(cfg.device)
    t0 = time.perf_counter()
    allocation = plan(cfg)
    tr_x, tr_y, te_x, te_y, classes = task_split(cfg.task, cfg.n_train, cfg.n_test, seed)
    model, tok = load_minilm_classifier(len(classes), path=cfg.model, dropout=cfg.head_dropout, seed=seed)
    if tok.pad_token_id is None and getattr(tok, "eos_token_id", None) is not None:
        tok.pad_token = tok.eos_token  # decoders (the paper preset)
    model.train()
    if cfg.variant in MOE_VARIANTS:
        wrapped: Any = MoLoraModel(model, cfg.adapter(tuple(allocation["experts"])), seed=seed)
        extra_loss = wrapped.balance_loss
    else:
        from peft import get_peft_model

        pcfg = peft_rank_config(model, allocation["ranks"], cfg.target_modules, r=allocation["rank"],
                                lora_alpha=cfg.lora_alpha * allocation["rank"] / cfg.r, keep_scaling=True,
                                lora_dropout=cfg.lora_dropout, modules_to_save=["classifier"])
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, pcfg)
        extra_loss = None
    wrapped.to(device)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    train_data = TokenizedBatches(tr_x, tr_y, tok, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed)
    test_data = TokenizedBatches(te_x, te_y, tok, batch_size=64, max_length=cfg.max_length, shuffle=False)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = None
    if cfg.warmup_steps:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))

    def loss_fn(m: Any, batch: dict) -> Any:
        loss = m(**batch).loss
        if extra_loss is not None and cfg.balance_loss > 0:
            loss = loss + extra_loss().to(loss.device)
        return loss

    t1 = time.perf_counter()
    result = train(wrapped, train_data, opt, loss_fn=loss_fn, epochs=cfg.epochs, scheduler=sched,
                   scheduler_interval="step", device=device, progress=progress)
    t2 = time.perf_counter()
    acc = _accuracy(wrapped, test_data, device)
    t3 = time.perf_counter()
    hist = [float(x) for x in result.history["train_loss"]] if "train_loss" in result.history else []
    metrics = {"accuracy": acc, "train_loss": float(hist[-1]) if hist else float("nan"),
               "trainable_params": int(n_trainable), "train_s": t2 - t1, "eval_s": t3 - t2,
               "setup_s": t1 - t0, "n_train": len(tr_x), "n_test": len(te_x)}
    if out_dir is not None:
        if cfg.variant in MOE_VARIANTS:
            wrapped.save_pretrained(out_dir, overwrite=overwrite)
        else:
            from htsr.io import replace_dir

            replace_dir(out_dir, lambda tmp: wrapped.save_pretrained(str(tmp)), overwrite=overwrite)
    return {"metrics": metrics, "allocation": allocation, "classes": list(classes), "history": hist}


def compare_cell(task: str, variant: str, seed: int, *, config: dict[str, Any],
                 adapters_dir: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One (task, variant, seed) cell: a module-level function of plain values (for run_sweep and Ray)."""
    cfg = TrainConfig.from_dict({**config, "task": task, "variant": variant})
    out = None if adapters_dir is None else Path(adapters_dir) / task / variant / f"seed{seed}"
    res = run(cfg, seed, out, overwrite=True)
    return res["metrics"], {"allocation": res["allocation"], "history": res["history"], "classes": res["classes"]}


def execution_free(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration without what a cell varies or how it runs: what identifies results."""
    d = cfg.to_dict()
    for k in ("task", "variant", "threads", "device"):
        d.pop(k, None)
    return d


def compare(cfg: TrainConfig, variants: Sequence[str], tasks: Sequence[str], seeds: Sequence[int],
            out_dir: str | Path, *, executor: Any = None, progress: bool | None = None,
            save_adapters: bool = True) -> Any:
    """Every (task, variant, seed) cell through :func:`htsr.experiments.run_sweep` into ``out_dir``
    (``results.csv``, ``cells/*.json``, ``adapters/<task>/<variant>/seed<k>/``); resumable."""
    from htsr.experiments import ResultStore, grid, run_sweep
    from htsr.experiments.store import config_id

    fn = functools.partial(compare_cell, config=cfg.to_dict(),
                           adapters_dir=str(Path(out_dir) / "adapters") if save_adapters else None)
    cells = grid(seed=list(seeds), task=list(tasks), variant=list(variants))  # whole seeds first
    return run_sweep(fn, cells, ResultStore(out_dir), executor=executor,
                     extra={"config_id": config_id(execution_free(cfg))}, progress=progress)


def summarize(table: Any, variants: Sequence[str] | None = None) -> Any:
    """Per (task, variant): mean and std (ddof=1) of accuracy over seeds, the mean difference to the baseline
    variant on the same seeds and its std (paired), mean train wall time, and the number of seeds."""
    import pandas as pd

    if table is None or len(table) == 0:
        raise ConfigError("no finished cells to summarise")
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    rows = []
    for (task, variant), g in ok.groupby(["task", "variant"], sort=False):
        acc = g.set_index("seed")["accuracy"].astype(float)
        row = {"task": task, "variant": variant, "n": int(acc.size), "accuracy_mean": float(acc.mean()),
               "accuracy_std": float(acc.std(ddof=1)) if acc.size > 1 else float("nan"),
               "train_s_mean": float(g["train_s"].astype(float).mean())}
        base = BASELINE.get(str(variant))
        if base is not None:
            b = ok[(ok["task"] == task) & (ok["variant"] == base)].set_index("seed")["accuracy"].astype(float)
            common = acc.index.intersection(b.index)
            d = acc[common] - b[common]
            row.update(baseline=base, diff_mean=float(d.mean()) if d.size else float("nan"),
                       diff_std=float(d.std(ddof=1)) if d.size > 1 else float("nan"))
        rows.append(row)
    df = pd.DataFrame(rows)
    if variants:
        order = {v: i for i, v in enumerate(variants)}
        df = df.sort_values(["task", "variant"], key=lambda c: c.map(order) if c.name == "variant" else c,
                            kind="stable")
    return df.reset_index(drop=True)


def paired_table(summary: Any) -> Any:
    """The summary as a task x variant table of ``mean +- std`` accuracy (percent)."""
    s = summary.copy()
    s["cell"] = [f"{100 * m:.1f} ± {100 * sd:.1f}" if np.isfinite(sd) else f"{100 * m:.1f}"
                 for m, sd in zip(s["accuracy_mean"], s["accuracy_std"], strict=True)]
    return s.pivot(index="task", columns="variant", values="cell")
