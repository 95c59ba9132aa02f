"""The reference data shipped inside the package (MD-tree population, AlphaPruning alphas) reads from anywhere."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from htsr.data import reference as R
from htsr.errors import ConfigError


def test_shapes_and_columns():
    for kind in R.MDTREE_KINDS:
        df = R.mdtree_population(kind)
        assert len(df) == 1690
        assert {"train_error", "test_error", "hessian_t", "hessian_e", "mode_connectivity", "CKA",
                "bs_failure", "width_vs_batch", "data_vs_batch"} <= set(df.columns)
    sizes = {m: R.alphapruning_alphas(m).size for m in R.ALPHAPRUNING_MODELS}
    # 7 matrices per decoder block: 32 / 40 / 60 / 80 blocks
    assert sizes == {"llama-7b-hf": 224, "llama-13b-hf": 280, "llama-30b-hf": 420, "llama-65b-hf": 560,
                     "llama2-7b-hf": 224, "llama2-13b-hf": 280, "llama2-70b-hf": 560}
    blocks = R.alphapruning_block_alphas("llama-7b-hf")
    assert blocks.shape == (32,) and np.isclose(blocks[0], R.alphapruning_alphas()[:7].mean())


def test_errors_and_any_directory(tmp_path):
    with pytest.raises(ConfigError, match="unknown MD-tree population"):
        R.mdtree_population("clean")
    with pytest.raises(ConfigError, match="no shipped alphas for 'gpt2'"):
        R.alphapruning_alphas("gpt2")
    out = subprocess.run([sys.executable, "-c", "from htsr.data.reference import *; "
                          "print(len(mdtree_population()), alphapruning_alphas().size)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1690", "224"]
