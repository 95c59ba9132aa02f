"""The shared model zoo: small CNNs, 1-D FNO, MiniLM sentence classifier."""

from __future__ import annotations

import pytest
import torch

import htsr
from htsr.errors import ConfigError
from htsr.models.fno import make_fno
from htsr.models.vision import make_vision_model


@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_vision_models_shapes_seeding_and_global_rng(arch, torch_one_thread):
    state = torch.random.get_rng_state()
    a, b, c = (make_vision_model(arch, seed=s) for s in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), state)  # building a model leaves the global RNG alone
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters(), strict=True))
    out = a(torch.randn(5, 1, 8, 8))
    assert out.shape == (5, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in a.parameters())


def test_vision_bad_arch():
    with pytest.raises(ConfigError, match="unknown arch"):
        make_vision_model("vit")


def test_fno_resolution_invariance_and_analysed_layers(torch_one_thread):
    f = make_fno(modes=8, width=16, seed=0)
    n = 64
    coef = torch.fft.rfft(torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    coef[:, 8:] = 0  # band-limited input
    x = torch.fft.irfft(coef, n=n)
    f = f.double()
    y = f(x)
    assert y.shape == (3, 64)
    # a Fourier layer is a global operator on the function: on a 2x finer grid of the same band-limited
    # input, the output interpolates the coarse one (up to the aliasing of the pointwise nonlinearities)
    xf = torch.fft.irfft(coef, n=2 * n) * 2
    assert torch.allclose(xf[:, ::2], x, atol=1e-10)
    yf = f(xf)
    assert yf.shape == (3, 128)
    assert (yf[:, ::2] - y).abs().max() < 0.05 * y.abs().max()
    a = htsr.analyze(f, preset="tempbalance", kinds=("linear", "conv1d"), min_evals=1)
    kinds = {r["name"]: r["kind"] for r in a.rows if r["status"] != "skipped"}
    assert set(kinds) == {"fc0", "ws.0", "ws.1", "ws.2", "ws.3", "fc1"}  # spectral weights never analysed; fc2: 1 eval
    with pytest.raises(ConfigError, match="batch, n"):
        f(torch.randn(64))


def test_minilm_classifier_mean_pooling_ignores_padding(torch_one_thread):
    from htsr.models.text import load_minilm_classifier

    model, tok = load_minilm_classifier(3, seed=0)
    model.eval()
    enc = tok(["In the beginning God created the heaven and the earth."], return_tensors="pt")
    pad = tok(["In the beginning God created the heaven and the earth."], return_tensors="pt",
              padding="max_length", max_length=40)
    with torch.no_grad():
        a = model(**enc).logits
        b = model(**pad).logits
    assert a.shape == (1, 3)
    assert torch.allclose(a, b, atol=1e-5)
    out = model(**enc, labels=torch.tensor([2]))
    assert out.loss.ndim == 0 and out["logits"] is out.logits
    # the encoder holds the real pretrained weights
    from safetensors import safe_open

    from htsr.examples import example_path

    with safe_open(str(example_path("minilm") / "model.safetensors"), "pt") as fh:
        key = next(k for k in fh.keys() if k.endswith("layer.0.attention.self.query.weight"))
        assert torch.equal(model.encoder.encoder.layer[0].attention.self.query.weight, fh.get_tensor(key))
