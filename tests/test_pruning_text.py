"""Calibration/evaluation text from dataset tables (Hub parquet shards, CSV/TSV) and the pruning progress bar."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from htsr.pruning import evaluation as E
from htsr.pruning.errors import PruningError


def test_read_text_from_tables(tmp_path):
    df = pd.DataFrame({"text": ["In the beginning", "", "was the Word"], "id": [1, 2, 3]})
    df.to_parquet(tmp_path / "test-00000-of-00001.parquet")
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    want = "In the beginning\n\n\n\nwas the Word"
    assert E.read_text(tmp_path / "test-00000-of-00001.parquet") == want
    assert E.read_text(tmp_path / "d.csv") == want == E.read_text(tmp_path / "d.tsv")
    pd.DataFrame({"sentence": ["x"]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(PruningError, match='no "text" column.*sentence'):
        E.read_text(tmp_path / "nocol.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(PruningError, match="cannot read .* as a table"):
        E.read_text(tmp_path / "broken.parquet")


def test_prune_progress_bar(capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from htsr.pruning.prune import prune_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    m = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    prune_model(m, 0.5, "wanda", "uniform", 0.0, ids, progress=True)
    assert "wanda blocks" in capsys.readouterr().err
    prune_model(m, 0.5, "wanda", "uniform", 0.0, ids, progress=False)
    assert "wanda blocks" not in capsys.readouterr().err
