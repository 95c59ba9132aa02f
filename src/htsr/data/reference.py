"""Reference data shipped inside the package (see ``reference/README.md``): the MD-tree public population and
AlphaPruning's per-matrix alphas of seven LLaMA models. Both MIT licensed; read offline from any directory."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import pandas as pd

from htsr.errors import ConfigError

MDTREE_KINDS = ("normal", "noise")
ALPHAPRUNING_MODELS = ("llama-7b-hf", "llama-13b-hf", "llama-30b-hf", "llama-65b-hf", "llama2-7b-hf",
                       "llama2-13b-hf", "llama2-70b-hf")
#: matrices per decoder block in AlphaPruning's alpha files, in file order
LLAMA_MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _file(*parts: str):
    return resources.files("htsr.data").joinpath("reference", *parts)


@functools.lru_cache(maxsize=2)
def _mdtree(kind: str) -> pd.DataFrame:
    with _file("mdtree", f"dataframe_{kind}_public.csv.xz").open("rb") as fh:
        return pd.read_csv(fh, compression="xz")


def mdtree_population(kind: str = "normal") -> pd.DataFrame:
    """The MD-tree paper's public population table (``normal``: clean labels; ``noise``: 10% label noise); a copy."""
    if kind not in MDTREE_KINDS:
        raise ConfigError(f"unknown MD-tree population {kind!r}; expected one of {', '.join(MDTREE_KINDS)}")
    return _mdtree(kind).copy()


def alphapruning_alphas(model: str = "llama-7b-hf") -> np.ndarray:
    """AlphaPruning's per-matrix alphas (peak xmin) of a LLaMA model, in block order, q/k/v/o/gate/up/down."""
    if model not in ALPHAPRUNING_MODELS:
        raise ConfigError(f"no shipped alphas for {model!r}; available: {', '.join(ALPHAPRUNING_MODELS)}")
    with _file("alphapruning", f"{model}.npy").open("rb") as fh:
        return np.load(fh, allow_pickle=False)


def alphapruning_block_alphas(model: str = "llama-7b-hf") -> np.ndarray:
    """Mean alpha per decoder block (the per-layer metric AlphaLoRA allocates by)."""
    a = alphapruning_alphas(model)
    return a.reshape(-1, len(LLAMA_MATRICES)).mean(axis=1)
