"""Fashion-MNIST-C: families, determinism, expected values of the deterministic corruptions, the on-disk cache."""

from __future__ import annotations

import io

import numpy as np
import pytest

from htsr.data import fashion_mnist as fm
from htsr.ensembles.corruptions import FAMILIES, corrupt, fashion_mnist_c
from htsr.errors import ConfigError

needs_data = pytest.mark.skipif(not fm.available(), reason="Fashion-MNIST files not installed")


@pytest.fixture(scope="module")
def images():
    if not fm.available():
        pytest.skip("Fashion-MNIST files not installed")
    return fm.fashion_mnist()[2][:12]


def test_at_least_ten_families_of_five_severities():
    assert len(FAMILIES) >= 10 and len(set(FAMILIES)) == len(FAMILIES)
    assert {"gaussian_noise", "defocus_blur", "contrast", "brightness", "pixelate", "elastic_transform",
            "jpeg_compression"} <= set(FAMILIES)


@needs_data
def test_every_family_is_deterministic_and_changes_the_images(images):
    for fam in FAMILIES:
        outs = [corrupt(images, fam, s, seed=0) for s in range(1, 6)]
        for s, o in enumerate(outs, 1):
            assert o.dtype == np.uint8 and o.shape == images.shape, fam
            np.testing.assert_array_equal(o, corrupt(images, fam, s, seed=0), err_msg=fam)
        assert np.abs(outs[-1].astype(int) - images).mean() > 0.5, fam


@needs_data
def test_random_families_depend_on_the_seed(images):
    for fam in ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "fog",
                "elastic_transform"):
        assert not np.array_equal(corrupt(images, fam, 3, seed=0), corrupt(images, fam, 3, seed=1)), fam


@needs_data
def test_severity_makes_it_worse(images):
    for fam in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur",
                "zoom_blur", "fog", "brightness", "contrast", "pixelate", "jpeg_compression"):
        d = [np.abs(corrupt(images, fam, s).astype(float) - images).mean() for s in range(1, 6)]
        assert d[0] < d[-1] and all(b >= a - 0.5 for a, b in zip(d, d[1:], strict=False)), (fam, d)


def test_deterministic_families_by_formula():
    x = (np.arange(2 * 28 * 28) % 256).astype(np.uint8).reshape(2, 28, 28)
    f = x / 255.0
    want = np.floor(np.clip(f + 0.2, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(corrupt(x, "brightness", 4), want)
    m = f.mean(axis=(1, 2), keepdims=True)
    want = np.floor(np.clip((f - m) * 0.4 + m, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(corrupt(x, "contrast", 3), want)
    flat = np.full((1, 28, 28), 77, np.uint8)  # blurs and pixelation keep a constant image constant
    for fam in ("gaussian_blur", "defocus_blur", "pixelate", "zoom_blur", "motion_blur"):
        assert np.abs(corrupt(flat, fam, 5).astype(int) - 77).max() <= 1, fam


def test_jpeg_is_a_pillow_round_trip():
    from PIL import Image

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for k in range(3):
        buf = io.BytesIO()
        Image.fromarray(x[k], mode="L").save(buf, "JPEG", quality=58)
        want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
        np.testing.assert_array_equal(corrupt(x, "jpeg_compression", 3)[k], want)


def test_gaussian_noise_has_the_stated_scale():
    x = np.full((50, 28, 28), 128, np.uint8)  # mid grey: no clipping at c <= 0.1
    d = corrupt(x, "gaussian_noise", 5, seed=3).astype(float) - 128
    assert d.std() == pytest.approx(0.10 * 255, rel=0.03)  # c = 0.10 at severity 5


def test_corruption_bad_input():
    x = np.zeros((1, 28, 28), np.uint8)
    with pytest.raises(ConfigError, match="unknown corruption 'snow'"):
        corrupt(x, "snow", 1)
    with pytest.raises(ConfigError, match="severity must be an integer in 1..5"):
        corrupt(x, "contrast", 6)
    with pytest.raises(ConfigError, match="uint8"):
        corrupt(np.zeros((1, 32, 32)), "contrast", 1)


@needs_data
def test_cache_is_written_once_and_repaired(tmp_path):
    imgs, labels = fashion_mnist_c("contrast", (1, 5), n=30, cache_dir=tmp_path)
    assert imgs.shape == (2, 30, 28, 28) and labels.shape == (30,)
    d = tmp_path / "fashion-mnist-c" / "v1" / "seed0" / "n30"
    f = d / "contrast.npy"
    assert f.is_file() and (d / "meta.json").is_file() and (d / "labels.npy").is_file()
    stamp = f.stat().st_mtime_ns
    again, _ = fashion_mnist_c("contrast", (1, 5), n=30, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, imgs)
    assert f.stat().st_mtime_ns == stamp  # read, not regenerated
    f.write_bytes(f.read_bytes()[:100])  # a damaged cache file is regenerated
    fixed, _ = fashion_mnist_c("contrast", (1, 5), n=30, cache_dir=tmp_path)
    np.testing.assert_array_equal(fixed, imgs)
    nocache, _ = fashion_mnist_c("contrast", (1, 5), n=30, cache=False)
    np.testing.assert_array_equal(nocache, imgs)
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ConfigError, match="n must be in 1..10000"):
        fashion_mnist_c("contrast", n=20000, cache_dir=tmp_path)
