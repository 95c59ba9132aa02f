"""Fashion-MNIST from Debian's dataset-fashion-mnist (installed by .ci/run), and IDX validation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from htsr.data import fashion_mnist as F
from htsr.errors import SourceError

needs_data = pytest.mark.skipif(not F.available(), reason="apt-get install dataset-fashion-mnist")


@needs_data
def test_official_split_shapes_and_balance():
    xtr, ytr, xte, yte = F.fashion_mnist()
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28) and xtr.dtype == np.uint8
    # the data set's published facts: 6,000 training and 1,000 test images per class
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10
    x = xtr.astype(np.float64) / 255.0
    assert x.mean() == pytest.approx(F.TRAIN_MEAN, abs=1e-12) and x.std() == pytest.approx(F.TRAIN_STD, abs=1e-9)


@needs_data
def test_split_fraction_is_stratified_and_seeded():
    a = F.fashion_mnist_split(0.02, seed=1, test_limit=500)
    b = F.fashion_mnist_split(0.02, seed=1, test_limit=500)
    c = F.fashion_mnist_split(0.02, seed=2, test_limit=500)
    assert a[0].shape == (1200, 1, 28, 28) and a[2].shape == (500, 1, 28, 28)
    assert a[1].bincount().tolist() == [120] * 10
    assert np.array_equal(a[0].numpy(), b[0].numpy()) and not np.array_equal(a[0].numpy(), c[0].numpy())


def _idx(path, arr, gz=False, dims=None):
    dims = arr.shape if dims is None else dims
    raw = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


def test_reads_a_directory_of_idx_files_and_rejects_corrupt_ones(tmp_path):
    rng = np.random.default_rng(0)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)), gz=True)
    _idx(tmp_path / "train-labels-idx1-ubyte", np.arange(20) % 10)
    _idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (10, 28, 28)))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10))
    xtr, ytr, xte, yte = F.fashion_mnist(tmp_path)
    assert xtr.shape == (20, 28, 28) and yte.tolist() == list(range(10))
    bad = tmp_path / "bad"
    bad.mkdir()
    _idx(bad / "x", np.zeros(10), dims=(12,))
    with pytest.raises(SourceError, match=r"declares \(12,\) = 12 bytes of data, the file has 10"):
        F.read_idx(bad / "x")
    (bad / "y").write_bytes(b"\x00\x00\x0d\x01abcd")
    with pytest.raises(SourceError, match="not an unsigned-byte IDX file"):
        F.read_idx(bad / "y")
    with pytest.raises(SourceError, match="apt-get install dataset-fashion-mnist"):
        F.fashion_mnist(bad)
    with pytest.raises(SourceError, match="is not a directory.*apt-get install"):
        F.fashion_mnist(tmp_path / "nope")
