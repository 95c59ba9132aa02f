"""Model adapter and block-by-block pruning on tiny random HF models; save/reload; bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from htsr.nn import find_layout, weight_2d
from htsr.pruning import PruningError
from htsr.pruning import allocation as A
from htsr.pruning.prune import (
    REPORT_FILE,
    prune_model,
    save_pruned,
    sparsity_of,
)
from htsr.pruning.pruners import LayerStats, wanda_prune
from tests.esd_reference import esd, hill_alpha_peak, ww_sparsity

transformers = pytest.importorskip("transformers")

V = 256
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def make(arch: str) -> nn.Module:
    """A tiny randomly initialised model of each supported family (seeded)."""
    torch.manual_seed(0)
    t = transformers
    if arch == "llama":
        m = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=V, intermediate_size=64, num_key_value_heads=2, **SMALL))
    elif arch == "mistral":
        m = t.MistralForCausalLM(t.MistralConfig(vocab_size=V, intermediate_size=64, num_key_value_heads=2, **SMALL))
    elif arch == "gpt2":
        m = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                           bos_token_id=0, eos_token_id=0))
    elif arch == "neox":
        m = t.GPTNeoXForCausalLM(t.GPTNeoXConfig(vocab_size=V, intermediate_size=64, **SMALL))
    elif arch == "opt":
        m = t.OPTForCausalLM(t.OPTConfig(vocab_size=V, ffn_dim=64, word_embed_proj_dim=32, **SMALL))
    elif arch == "bert":
        m = t.BertModel(t.BertConfig(vocab_size=V, intermediate_size=64, **SMALL))
    else:
        raise ValueError(arch)
    return m.eval()


LAYOUTS = {
    "llama": ("model.layers", 7, "model.layers.0.self_attn.q_proj"),
    "mistral": ("model.layers", 7, "model.layers.1.mlp.down_proj"),
    "gpt2": ("transformer.h", 4, "transformer.h.0.attn.c_attn"),
    "neox": ("gpt_neox.layers", 4, "gpt_neox.layers.0.attention.query_key_value"),
    "opt": ("model.decoder.layers", 6, "model.decoder.layers.1.fc2"),
    "bert": ("encoder.layer", 6, "encoder.layer.0.attention.self.query"),
}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def calib(n=4, seqlen=16, seed=0):
    return torch.randint(0, V, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", list(LAYOUTS))
def test_layout(arch):
    m = make(arch)
    lay = find_layout(m)
    path, per_block, example = LAYOUTS[arch]
    assert lay.blocks_path == path
    assert [len(b) for b in lay.layers] == [per_block, per_block]
    assert example in lay.names
    assert not any("embed" in n or "lm_head" in n or "wte" in n for n in lay.names)
    assert list(lay.block_ids) == [0] * per_block + [1] * per_block


def test_layout_error():
    from htsr.nn import LayoutError

    with pytest.raises(LayoutError, match="cannot find the transformer blocks"):
        find_layout(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))


@pytest.mark.parametrize("arch", list(LAYOUTS))
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_prune_every_family(arch, pruner):
    m = make(arch)
    ids = calib()
    r = prune_model(m, 0.5, pruner, "alpha", 0.2, ids)
    lay = find_layout(m)
    assert [row["name"] for row in r.layers] == lay.names
    targets = np.array([row["target_sparsity"] for row in r.layers])
    params = np.array([row["params"] for row in r.layers])
    assert abs(A.weighted_mean(targets, params) - 0.5) < 1e-12
    # block-wise: one target per block, and a larger block metric gets more sparsity
    tb = [targets[lay.block_ids == k] for k in (0, 1)]
    assert all(np.all(t == t[0]) for t in tb) and tb[0][0] != tb[1][0]
    mb = [np.mean([row["metric"] for row in r.layers if row["block"] == k]) for k in (0, 1)]
    assert (tb[0][0] > tb[1][0]) == (mb[0] > mb[1])
    for row in r.layers:
        w = weight_2d(m.get_submodule(row["name"]))
        assert row["achieved_sparsity"] == float((w == 0).sum()) / w.numel()
        out_f, in_f = row["shape"]
        if pruner == "magnitude":
            expected = int(out_f * in_f * row["target_sparsity"])
        elif pruner == "wanda":
            expected = out_f * int(in_f * row["target_sparsity"])
        else:
            expected = sum(int(out_f * min(128, in_f - i) * row["target_sparsity"]) for i in range(0, in_f, 128))
        assert (w == 0).sum() == expected, row["name"]
    assert abs(r.achieved_sparsity - sparsity_of(m)) < 1e-12
    assert abs(r.achieved_sparsity - 0.5) < 0.02
    with torch.no_grad():
        out = m(ids[:1])
    assert torch.isfinite(getattr(out, "logits", None) if hasattr(out, "logits") else out.last_hidden_state).all()


def test_alpha_allocation_uses_the_spectral_engine(monkeypatch):
    """Expected alphas from the reference estimator's formulas (numpy SVD, histogram-peak xmin with htsr's documented
    unit fix, least KS distance) and expected sparsities from ww_sparsity's formula (numpy): prune_model must give
    both; an Analysis given is used as is (no second analysis), a failed fit in it is imputed with the mean."""
    import htsr
    import htsr.spectra.analysis as SA

    m = make("llama")
    lay = find_layout(m)
    alphas = np.array([hill_alpha_peak(esd(m.get_submodule(n))) for n in lay.names])
    params = np.array([m.get_submodule(n).weight.numel() for n in lay.names], float)
    expected = ww_sparsity(alphas, params, lay.block_ids, 0.6, 0.3)
    a = htsr.analyze(m, "alphapruning", layers=lay.names, kinds=("linear", "hf_conv1d"))
    r = prune_model(m, 0.6, "magnitude", "alpha", 0.3)
    np.testing.assert_allclose([row["metric"] for row in r.layers], alphas, rtol=1e-9)
    np.testing.assert_allclose([row["target_sparsity"] for row in r.layers], expected, rtol=1e-12)
    assert r.settings["analysis_given"] is False and not r.imputed_metric_layers

    def boom(*args, **kw):
        raise AssertionError("analyze() called although an analysis was given")

    monkeypatch.setattr(SA, "analyze", boom)
    r1 = prune_model(make("llama"), 0.6, "magnitude", "alpha", 0.3, analysis=a)
    np.testing.assert_allclose([row["target_sparsity"] for row in r1.layers], expected, rtol=1e-12)
    assert r1.settings["analysis_given"] is True
    bad = lay.names[3]
    a.rows = [({**row, "status": "failed", "alpha": float("nan"), "reason": "test: no fit"} if row["name"] == bad
               else row) for row in a.rows]
    r2 = prune_model(make("llama"), 0.6, "magnitude", "alpha", 0.3, analysis=a)
    assert r2.imputed_metric_layers == [bad]
    imputed = alphas.copy()
    imputed[3] = np.mean(np.delete(alphas, 3))
    np.testing.assert_allclose([row["metric"] for row in r2.layers], imputed, rtol=1e-9)
    np.testing.assert_allclose([row["target_sparsity"] for row in r2.layers],
                               ww_sparsity(imputed, params, lay.block_ids, 0.6, 0.3), rtol=1e-12)
    r3 = prune_model(make("llama"), 0.6, "magnitude", "alpha", 0.3, mapping="matrix",
                     metrics={n: float(i) for i, n in enumerate(lay.names)})
    np.testing.assert_allclose([row["target_sparsity"] for row in r3.layers],
                               ww_sparsity(np.arange(len(lay.names), dtype=float), params, None, 0.6, 0.3),
                               rtol=1e-12)


def test_llama7b_alphas_shipped_with_htsr_give_the_reference_block_sparsities():
    """The LLaMA-7B alpha_peak values of the AlphaPruning repository (shipped as htsr.data.reference) on a 32-block
    LLaMA layout: block sparsities at S = 0.7, eps = 0.2 are ww_sparsity's (numpy), and they are what
    docs/pruning.md states (lowest block 9 at 0.568, highest block 25 at 0.852, block 0 0.570, block 31 0.732)."""
    from htsr.data.reference import alphapruning_alphas

    alphas = alphapruning_alphas("llama-7b-hf")
    assert alphas.shape == (224,)
    torch.manual_seed(0)
    cfg = dict(SMALL, num_hidden_layers=32)
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=V, intermediate_size=64,
                                                               num_key_value_heads=2, **cfg)).eval()
    lay = find_layout(m)
    params = np.array([m.get_submodule(n).weight.numel() for n in lay.names], float)
    blocks = np.repeat(np.arange(32), 7)
    assert np.array_equal(lay.block_ids, blocks)
    r = prune_model(m, 0.7, "magnitude", "alpha", 0.2, metrics=alphas)
    targets = np.array([row["target_sparsity"] for row in r.layers])
    np.testing.assert_allclose(targets, ww_sparsity(alphas, params, blocks, 0.7, 0.2), rtol=1e-12)
    per_block = targets.reshape(32, 7)[:, 0]
    block_alpha = alphas.reshape(32, 7).mean(1)
    assert int(np.argmin(per_block)) == int(np.argmin(block_alpha)) == 9
    assert int(np.argmax(per_block)) == int(np.argmax(block_alpha)) == 25
    assert [round(float(per_block[k]), 3) for k in (9, 25, 0, 31)] == [0.568, 0.852, 0.570, 0.732]
    assert abs(r.achieved_sparsity - 0.7) < 0.01


def test_sequential_calibration_uses_pruned_outputs():
    dense = make("llama")
    m = copy.deepcopy(dense)
    ids = calib()
    prune_model(m, 0.5, "wanda", "uniform", 0.0, ids)
    # recompute the inputs of block 1 through the pruned block 0: the pruned block 1 must match
    lay = find_layout(m)
    names = list(lay.layers[1])
    stats = {n: LayerStats(weight_2d(m.get_submodule(n)).shape[1]) for n in names}
    hooks = [m.get_submodule(n).register_forward_hook(lambda mod, a, o, st=stats[n]: st.add_batch(a[0]))
             for n in names]
    dense_stats = {n: LayerStats(weight_2d(dense.get_submodule(n)).shape[1]) for n in names}
    hooks += [dense.get_submodule(n).register_forward_hook(lambda mod, a, o, st=dense_stats[n]: st.add_batch(a[0]))
              for n in names]
    with torch.no_grad():
        for i in range(ids.shape[0]):
            m(ids[i:i + 1], use_cache=False)
            dense(ids[i:i + 1], use_cache=False)
    for h in hooks:
        h.remove()
    differs = 0
    for n in names:
        w_seq = weight_2d(dense.get_submodule(n)).clone()
        wanda_prune(w_seq, 0.5, stats[n].col_sq_norm)
        # q/k/v see only the (normalised) block input; later layers' inputs also depend on block 1's own
        # pruned layers, which were dense when their statistics were collected
        if n.endswith(("q_proj", "k_proj", "v_proj")):
            assert torch.equal(w_seq, weight_2d(m.get_submodule(n))), n
            w_dense = weight_2d(dense.get_submodule(n)).clone()
            wanda_prune(w_dense, 0.5, dense_stats[n].col_sq_norm)
            differs += not torch.equal(w_dense, w_seq)
    assert differs > 0  # the dense model's inputs would have given other masks


def test_owl_allocation_on_model():
    m = make("opt")
    r = prune_model(m, 0.6, "wanda", "owl", calibration_ids=calib(), owl_lambda=0.05)
    t = np.array([row["target_sparsity"] for row in r.layers])
    p = np.array([row["params"] for row in r.layers])
    assert abs(A.weighted_mean(t, p) - 0.6) < 1e-12
    assert np.isclose(t.max() - t.min(), 0.1)
    ratios = {row["block"]: row["metric"] for row in r.layers}
    lo, hi = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
    assert r.layers[[row["block"] for row in r.layers].index(hi)]["target_sparsity"] < 0.6 < \
        r.layers[[row["block"] for row in r.layers].index(lo)]["target_sparsity"]


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_on_model(nm):
    m = make("llama")
    r = prune_model(m, None, "sparsegpt", "uniform", calibration_ids=calib(), nm=nm)
    assert r.target_sparsity == 0.5 and r.achieved_sparsity == 0.5
    for x in find_layout(m).modules():
        w = weight_2d(x)
        assert int((w.reshape(w.shape[0], -1, nm[1]) != 0).sum(-1).max()) <= nm[0]


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m, snap):
    return all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())


def test_bad_input_changes_nothing():
    m = make("llama")
    snap = _snapshot(m)
    for kw, match in [
        (dict(sparsity=1.0, pruner="magnitude"), "sparsity"),
        (dict(sparsity=-0.1, pruner="magnitude"), "sparsity"),
        (dict(sparsity=None, pruner="magnitude"), "sparsity"),
        (dict(sparsity=0.9, pruner="magnitude", epsilon=0.3), "outside"),
        (dict(sparsity=0.5, pruner="wanda"), "calibration"),
        (dict(sparsity=0.5, pruner="wanda", calibration_ids=calib(seqlen=100)), "positions"),
        (dict(sparsity=0.5, pruner="nope"), "unknown pruner"),
        (dict(sparsity=0.5, pruner="wanda", allocation="alpha", nm=(2, 4), calibration_ids=calib()), "uniform"),
        (dict(sparsity=0.7, pruner="wanda", allocation="uniform", nm=(2, 4), calibration_ids=calib()), "contradicts"),
        (dict(sparsity=None, pruner="wanda", allocation="uniform", nm=(2, 3), calibration_ids=calib()), "multiple"),
        (dict(sparsity=0.5, pruner="wanda", calibration_ids=calib().float()), "integer"),
        (dict(sparsity=0.5, pruner="wanda", calibration_ids=calib() + 300), r"\[0, 256\)"),
        (dict(sparsity=0.5, pruner="magnitude", mapping="blocks"), "mapping"),
        (dict(sparsity=0.5, pruner="wanda", allocation="owl", calibration_ids=calib(), owl_lambda=0.6), "outside"),
    ]:
        with pytest.raises(PruningError, match=match):
            prune_model(m, **kw)
        assert _unchanged(m, snap)


def test_nan_activations_error_before_any_change():
    m = make("llama")
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")  # NaN appears in block 1's activations
    snap = _snapshot(m)
    with pytest.raises(PruningError, match="NaN/Inf activations in the outputs of block 1"):
        prune_model(m, 0.5, "wanda", "uniform", calibration_ids=calib())
    for k, v in m.state_dict().items():
        assert torch.equal(torch.nan_to_num(v), torch.nan_to_num(snap[k]))


def test_save_and_reload(tmp_path):
    src = tmp_path / "dense"
    make("gpt2").save_pretrained(str(src))
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    m = transformers.AutoModelForCausalLM.from_pretrained(str(src))
    r = prune_model(m, 0.6, "wanda", "alpha", 0.2, calib())
    out = save_pruned(m, tmp_path / "pruned", r, source_dir=src)
    assert (out / "model.safetensors").is_file() and (out / REPORT_FILE).is_file()
    import json

    rep = json.loads((out / REPORT_FILE).read_text())
    assert rep["schema"] == "htsr.pruning/1" and len(rep["layers"]) == 8
    re = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert abs(sparsity_of(re) - rep["achieved_sparsity"]) < 1e-12
    assert abs(rep["achieved_sparsity"] - 0.6) < 0.02
    for row in rep["layers"]:
        w = weight_2d(re.get_submodule(row["name"]))
        assert float((w == 0).sum()) / w.numel() == row["achieved_sparsity"]
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before  # input untouched
    from htsr.io import OutputError

    with pytest.raises(OutputError, match="is the input"):
        save_pruned(m, src, r, source_dir=src)
    with pytest.raises(OutputError, match="lies inside the input"):
        save_pruned(m, src / "sub", r, source_dir=src)
    (tmp_path / ".htsr-output").write_text("")
    with pytest.raises(OutputError, match="contains the input"):
        save_pruned(m, tmp_path, r, source_dir=src, overwrite=True)
    with pytest.raises(OutputError, match="exists and is not empty"):
        save_pruned(m, out, r)
    assert save_pruned(m, out, r, overwrite=True) == out.resolve()  # a previous htsr output may be replaced
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob(".*old*"))
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before


CALIB_TEXT = ("The river rose through the night and by morning the lower fields were under water. Farmers moved "
              "their animals to the hills, and the schoolhouse opened its doors to families who had nowhere to go. ")
EVAL_TEXT = ("Spectral analysis of weight matrices tells which layers of a network are well trained. A pruned model "
             "keeps most of its accuracy when the right weights are removed and the rest are left untouched. ")


def test_minilm_encoder(minilm_model):
    from htsr.examples import example_path
    from htsr.pruning import evaluation as E

    tok = E.load_tokenizer(example_path("minilm"))
    ids = E.calibration_windows(E.tokenize(tok, CALIB_TEXT * 10), 4, 32, seed=0)
    test = E.calibration_windows(E.tokenize(tok, EVAL_TEXT * 10), 4, 32, seed=1)
    with torch.no_grad():
        dense = minilm_model(test).last_hidden_state.mean(1)
    cos = {}
    for pruner, allocation in (("wanda", "alpha"), ("wanda", "uniform"), ("magnitude", "uniform")):
        m = copy.deepcopy(minilm_model)
        r = prune_model(m, 0.5, pruner, allocation, 0.2, ids)
        assert len(r.layers) == 36 and abs(r.achieved_sparsity - 0.5) < 0.01
        assert r.settings["blocks_path"] == "encoder.layer" and not r.imputed_metric_layers
        with torch.no_grad():
            pruned = m(test).last_hidden_state.mean(1)
        cos[pruner, allocation] = float(torch.nn.functional.cosine_similarity(dense, pruned).mean())
    # on real weights, activation-aware Wanda keeps the sentence embeddings much closer than magnitude
    assert cos["wanda", "uniform"] > cos["magnitude", "uniform"] + 0.05, cos
    assert all(0.3 < c < 0.9999 for c in cos.values()), cos


def test_other_metrics_and_imputation():
    m = make("llama")
    r = prune_model(m, 0.5, "magnitude", "alpha", 0.2, metric="stable_rank")
    assert r.settings["metric"] == "stable_rank" and not r.imputed_metric_layers
    ref = make("llama")
    for row in r.layers:  # stable rank = sum(sigma^2) / max(sigma^2), from a numpy SVD
        ev = esd(ref.get_submodule(row["name"]))
        assert row["metric"] == pytest.approx(ev.sum() / ev.max(), rel=1e-9)
    # the tempbalance preset skips matrices with < 50 eigenvalues (all of these): nothing to impute from -> error
    with pytest.raises(PruningError, match="could not be computed for any of the 14 layers.*skipped"):
        prune_model(make("llama"), 0.5, "magnitude", "alpha", 0.2, metric="alpha_median")
    with pytest.raises(PruningError, match="unknown metric"):
        prune_model(make("llama"), 0.5, "magnitude", "alpha", 0.2, metric="nope")
    m3 = make("llama")
    names = find_layout(m3).names
    vals = {n: (float("nan") if i == 3 else 2.0 + i / 10) for i, n in enumerate(names)}
    r3 = prune_model(m3, 0.5, "magnitude", "alpha", 0.2, metrics=vals, mapping="matrix")
    assert r3.imputed_metric_layers == [names[3]]
    assert np.isclose(r3.layers[3]["metric"], np.nanmean(list(vals.values())))
