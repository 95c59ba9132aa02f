"""Linear CKA (biased, debiased, minibatch) and the model adapter (hooks, layer names, bad input)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.landscape.cka import MinibatchCKA, compare_models, hsic1, linear_cka, output_cka

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny matrices: threads only spin on a busy box


def _rng_features(n=60, p=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g, dtype=torch.float64), g


def _orthogonal(p, g):
    q, r = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# ----------------------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("method", ["features", "gram"])
def test_invariant_to_orthogonal_and_isotropic_scaling(debiased, method):
    x, g = _rng_features()
    q = _orthogonal(7, g)
    assert linear_cka(x, 3.7 * x @ q, debiased=debiased, method=method) == pytest.approx(1.0, abs=1e-10)
    # a translation of the features changes nothing either (centring)
    assert linear_cka(x, x + 5.0, debiased=debiased, method=method) == pytest.approx(1.0, abs=1e-10)
    # ... but an anisotropic linear map does: the test can fail
    a = torch.diag(torch.tensor([10.0, 1, 1, 1, 0.1, 0.1, 0.1], dtype=torch.float64))
    assert linear_cka(x, x @ a, debiased=debiased, method=method) < 0.9


def test_minibatch_invariant_to_orthogonal_and_scaling():
    x, g = _rng_features(n=200)
    q = _orthogonal(7, g)
    acc = MinibatchCKA()
    for i in range(0, 200, 20):
        acc.update([x[i:i + 20]], [0.01 * x[i:i + 20] @ q])
    assert acc.compute()[0, 0] == pytest.approx(1.0, abs=1e-10)
    assert acc.n_batches_ == 10 and acc.n_samples_ == 200


@pytest.mark.parametrize("debiased", [False, True])
def test_symmetric_and_methods_agree(debiased):
    x, g = _rng_features(n=50, p=6)
    y = torch.tanh(x @ torch.randn(6, 9, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(50, 9, generator=g,
                                                                                                  dtype=torch.float64)
    a = linear_cka(x, y, debiased=debiased)
    assert a == pytest.approx(linear_cka(y, x, debiased=debiased), abs=1e-12)
    assert a == pytest.approx(linear_cka(x, y, debiased=debiased, method="gram"), abs=1e-10)
    assert a == pytest.approx(linear_cka(x, y, debiased=debiased, method="features"), abs=1e-10)
    assert 0.0 < a < 1.0
    # numpy input, float32 input: same number
    assert linear_cka(x.numpy(), y.float(), debiased=debiased) == pytest.approx(a, abs=1e-5)


def test_biased_matches_gram_definition():
    """Biased CKA = tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)), written out with H."""
    x, g = _rng_features(n=30, p=5)
    y = x[:, :3] ** 2 + torch.randn(30, 3, generator=g, dtype=torch.float64)
    n = 30
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x.numpy() @ x.numpy().T, y.numpy() @ y.numpy().T
    tr = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    want = tr(k, l_) / np.sqrt(tr(k, k) * tr(l_, l_))
    assert linear_cka(x, y) == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------------------- debiased vs O(n^2)
def _hsic_unbiased_direct(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012), Eq. (5), written out with explicit sums (O(n^2))."""
    n = k.shape[0]
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    ones = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (ones @ kt @ lt @ ones)
    return (term1 + term2 - term3) / (n * (n - 3))


def _hsic_ustatistic(k: np.ndarray, l_: np.ndarray) -> float:
    """The same estimator as a U-statistic over distinct index tuples (O(n^4)): the definition."""
    n = k.shape[0]
    a = np.mean([k[i, j] * l_[i, j] for i, j in itertools.permutations(range(n), 2)])
    b = np.mean([k[i, j] * l_[q, r] for i, j, q, r in itertools.permutations(range(n), 4)])
    c = np.mean([k[i, j] * l_[i, q] for i, j, q in itertools.permutations(range(n), 3)])
    return a + b - 2 * c


def test_hsic1_equals_ustatistic_definition():
    x, g = _rng_features(n=7, p=3)
    y = torch.randn(7, 4, generator=g, dtype=torch.float64)
    k, l_ = (x @ x.T).numpy(), (y @ y.T).numpy()
    direct = _hsic_unbiased_direct(k, l_)
    assert direct == pytest.approx(_hsic_ustatistic(k, l_), rel=1e-10, abs=1e-12)
    assert float(hsic1(torch.from_numpy(k), torch.from_numpy(l_))) == pytest.approx(direct, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("method", ["features", "gram", "auto"])
def test_debiased_matches_direct_quadratic_implementation(method):
    x, g = _rng_features(n=80, p=12)
    y = x[:, :5] @ torch.randn(5, 20, generator=g, dtype=torch.float64) + torch.randn(80, 20, generator=g,
                                                                                    dtype=torch.float64)
    xc = (x - x.mean(0)).numpy()
    yc = (y - y.mean(0)).numpy()
    k, l_ = xc @ xc.T, yc @ yc.T
    want = _hsic_unbiased_direct(k, l_) / np.sqrt(_hsic_unbiased_direct(k, k) * _hsic_unbiased_direct(l_, l_))
    got = linear_cka(x, y, debiased=True, method=method)
    assert got == pytest.approx(want, abs=1e-10)
    assert abs(got - linear_cka(x, y)) > 1e-3  # debiasing matters at n = 80


def test_minibatch_converges_to_population_and_full_batch_unbiased():
    """Gaussian X (d=6), Y = X W + noise: population linear CKA = ||S_yx||^2 / (||S_xx|| ||S_yy||)."""
    g = torch.Generator().manual_seed(11)
    d, q, sigma = 6, 4, 1.5
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    s_xx = a @ a.T / d + 0.2 * torch.eye(d, dtype=torch.float64)
    w = torch.randn(d, q, generator=g, dtype=torch.float64)
    s_xy = s_xx @ w
    s_yy = w.T @ s_xx @ w + sigma**2 * torch.eye(q, dtype=torch.float64)
    population = float(torch.linalg.matrix_norm(s_xy) ** 2
                       / (torch.linalg.matrix_norm(s_xx) * torch.linalg.matrix_norm(s_yy)))
    chol = torch.linalg.cholesky(s_xx)
    n_batches, bs = 1000, 32
    x = torch.randn(n_batches * bs, d, generator=g, dtype=torch.float64) @ chol.T
    y = x @ w + sigma * torch.randn(n_batches * bs, q, generator=g, dtype=torch.float64)

    acc = MinibatchCKA()
    errs = {}
    for b in range(n_batches):
        acc.update([x[b * bs:(b + 1) * bs]], [y[b * bs:(b + 1) * bs]])
        if b + 1 in (5, n_batches):
            errs[b + 1] = abs(acc.compute()[0, 0] - population)
    full_unbiased = linear_cka(x, y, debiased=True)
    assert errs[n_batches] < 0.01
    assert abs(acc.compute()[0, 0] - full_unbiased) < 0.01
    assert abs(full_unbiased - population) < 0.01
    # averaging per-batch *biased* CKA does not converge to it (batch size 32): the estimator matters
    per_batch_biased = np.mean([linear_cka(x[b * bs:(b + 1) * bs], y[b * bs:(b + 1) * bs]) for b in range(200)])
    assert abs(per_batch_biased - population) > 2 * errs[n_batches]


def test_minibatch_layer_matrix_shape_and_values():
    x, g = _rng_features(n=64, p=5)
    feats_a = [x, x**2]
    feats_b = [x @ _orthogonal(5, g), torch.randn(64, 3, generator=g, dtype=torch.float64), x]
    acc = MinibatchCKA(2, 3)
    for i in range(0, 64, 16):
        acc.update([f[i:i + 16] for f in feats_a], [f[i:i + 16] for f in feats_b])
    m = acc.compute()
    assert m.shape == (2, 3)
    assert m[0, 0] == pytest.approx(1.0, abs=1e-10) and m[0, 2] == pytest.approx(1.0, abs=1e-10)
    assert abs(m[0, 1]) < 0.5


# ----------------------------------------------------------------------------------------- bad input
def test_bad_input_errors():
    x, _ = _rng_features(n=20)
    with pytest.raises(ConfigError, match="same samples.*20 rows.*19"):
        linear_cka(x, x[:19])
    with pytest.raises(ConfigError, match="at least 4"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ConfigError, match="NaN"):
        linear_cka(x, torch.full_like(x, float("nan")))
    assert np.isnan(linear_cka(x, torch.ones_like(x)))  # constant representation: undefined, not 1 or 0
    acc = MinibatchCKA()
    with pytest.raises(ConfigError, match="at least 4"):
        acc.update([x[:3]], [x[:3]])
    with pytest.raises(ConfigError, match="side a has 5 samples.*side b has 6"):
        acc.update([x[:5]], [x[:6]])
    with pytest.raises(ConfigError, match="before any update"):
        acc.compute()
    with pytest.raises(ConfigError, match="expected 1 feature"):
        acc.update([x, x], [x])


# ----------------------------------------------------------------------------------------- models
def _mlp(seed: int, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)  # the test owns the global RNG here; the library never seeds globally
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 3))


def _batches(n_batches=6, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 8, generator=g), torch.randint(0, 3, (bs,), generator=g)) for _ in range(n_batches)]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_compare_models_layers_and_hooks_removed():
    a, b = _mlp(0), _mlp(1)
    data = _batches()
    df = compare_models(a, a, data, layers_a=["0", "2", "4"])
    assert list(df.index) == ["0", "2", "4"] and list(df.columns) == ["0", "2", "4"]
    assert np.allclose(np.diag(df.to_numpy()), 1.0)
    assert np.allclose(df.to_numpy(), df.to_numpy().T, atol=1e-12)
    assert df.attrs["n_samples"] == 96 and df.attrs["n_batches"] == 6
    # the last Linear's output is the model output
    d2 = compare_models(a, b, data, layers_a=["4", None], layers_b=["4"], estimator="debiased")
    assert d2.iloc[0, 0] == pytest.approx(d2.iloc[1, 0], abs=1e-12)
    assert list(d2.index) == ["4", "<output>"]
    for est in ("biased", "debiased", "minibatch"):
        v = output_cka(a, b, data, estimator=est)
        assert -0.5 < v < 1.0
    assert _hook_count(a) == 0 and _hook_count(b) == 0
    # full-batch biased equals linear_cka on the stacked outputs
    with torch.no_grad():
        xa = torch.cat([a(x) for x, _ in data])
        xb = torch.cat([b(x) for x, _ in data])
    assert output_cka(a, b, data, estimator="biased") == pytest.approx(linear_cka(xa, xb), abs=1e-10)
    assert a.training and b.training  # modes restored


def test_hooks_removed_on_error():
    a, b = _mlp(0), _mlp(1)

    def bad(name, t):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        compare_models(a, b, _batches(), layers_a=["0", "2"], feature_fn=bad)
    assert _hook_count(a) == 0 and _hook_count(b) == 0


def test_layer_name_errors_list_available():
    a = _mlp(0)
    wide = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ConfigError, match=r"model_a has no module named 'encoder'; available modules: 0, 1, 2, 3, 4"):
        compare_models(a, a, _batches(), layers_a=["encoder"])
    with pytest.raises(ConfigError, match=r"model_b .*no module named '4'.*available modules: 0, 1, 2"):
        compare_models(a, wide, _batches(), layers_a=["4"])
    assert _hook_count(a) == 0 and _hook_count(wide) == 0
    with pytest.raises(ConfigError, match="estimator"):
        compare_models(a, a, _batches(), estimator="rbf")
    with pytest.raises(ConfigError, match="no batches"):
        compare_models(a, a, [])


def test_module_called_twice_is_an_error():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(self.lin(x))

    m = Twice()
    with pytest.raises(ConfigError, match="ran 2 times"):
        compare_models(m, m, _batches(), layers_a=["lin"])
    assert _hook_count(m) == 0


def test_minilm_layers_real_model(minilm_dir, minilm_model):
    """Real pretrained all-MiniLM-L6-v2 vs the same architecture at random init, on KJV verses."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from htsr.data.corpora import kjv_verses

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    verses = kjv_verses()
    text_col = "text" if "text" in verses.columns else verses.columns[-1]
    texts = list(verses[text_col].iloc[:48])
    enc = tok(texts, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    data = [{k: v[i:i + 16] for k, v in enc.items()} for i in range(0, 48, 16)]
    torch.manual_seed(0)  # random init of the comparison model
    rand = BertModel(BertConfig.from_pretrained(str(minilm_dir))).eval()
    layers = ["embeddings", "encoder.layer.2", "encoder.layer.5"]
    same = compare_models(minilm_model, minilm_model, data, layers_a=layers)
    assert np.allclose(np.diag(same.to_numpy()), 1.0, atol=1e-8)
    diff = compare_models(minilm_model, rand, data, layers_a=layers, estimator="minibatch")
    assert diff.loc["encoder.layer.5", "encoder.layer.5"] < 0.95
    assert _hook_count(minilm_model) == 0 and _hook_count(rand) == 0


def test_constant_representation_is_nan_with_a_reason():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    b = copy.deepcopy(a)
    with torch.no_grad():  # an all-zero head: every sample gets the same (zero) output
        b[2].weight.zero_()
        b[2].bias.zero_()
    data = [(torch.randn(10, 6), torch.zeros(10)) for _ in range(3)]
    for est in ("biased", "debiased", "minibatch"):
        t = compare_models(a, b, data, layers_a=["0", None], estimator=est, progress=False)
        assert np.isnan(t.loc["<output>", "<output>"]) and np.isnan(t.loc["0", "<output>"])
        reasons = t.attrs["reasons"]
        assert set(reasons) == {"0", "<output>"} and set(reasons["0"]) == {"<output>"}, est
        why = reasons["<output>"]["<output>"]
        assert "model_b's '<output>'" in why and "model_a" not in why, (est, why)
        assert t.loc["0", "0"] == pytest.approx(1.0) and "0" not in reasons["0"]  # defined entries: no reason
