"""Fashion-MNIST (Xiao et al. 2017): 70,000 real 28x28 grey images of clothing, 10 classes, read offline.

The files come from Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``, which
puts the four IDX files under ``/usr/share/datasets/fashion-mnist``) or from any directory holding the same four
files (``train-images-idx3-ubyte[.gz]`` ...), given as ``root=`` or in ``HTSR_FASHION_MNIST``. The IDX headers are
validated (magic number, dimensions, file size) before any array is built.

:func:`fashion_mnist` returns the official train/test split as uint8 arrays (cached per process);
:func:`fashion_mnist_split` the tensors a recipe trains on: a stratified ``fraction`` of the 60,000 training
images drawn with ``seed``, standardised with the training set's mean/std, and the full 10,000-image test set.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from htsr.data.digits import stratified_subset
from htsr.errors import ConfigError, SourceError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV = "HTSR_FASHION_MNIST"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: mean and std of the 60,000 training images scaled to [0, 1]
TRAIN_MEAN, TRAIN_STD = 0.2860405969887955, 0.35302424451492237
INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass root=DIR / set "
                f"{ENV}=DIR to a directory holding the four IDX files ({', '.join(FILES.values())}, optionally .gz)")


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        p = root / name
        if p.is_file():
            return p
    raise SourceError(f"Fashion-MNIST file {stem}[.gz] not found in {root}; {INSTALL_HINT}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array, with its header checked against its size."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as e:
        raise SourceError(f"{p}: cannot read IDX file ({e})") from None
    if len(data) < 4:
        raise SourceError(f"{p}: not an IDX file (only {len(data)} bytes)")
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise SourceError(f"{p}: not an unsigned-byte IDX file (magic {data[:4].hex()}; expected 0x0000080N)")
    if len(data) < 4 + 4 * ndim:
        raise SourceError(f"{p}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    n = int(np.prod(dims))
    body = data[4 + 4 * ndim:]
    if len(body) != n:
        raise SourceError(f"{p}: IDX header declares {dims} = {n} bytes of data, the file has {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Where the files are: ``root``, else ``$HTSR_FASHION_MNIST``, else the Debian package's directory."""
    if root is None:
        root = os.environ.get(ENV) or DEBIAN_DIR
    p = Path(root)
    if not p.is_dir():
        raise SourceError(f"Fashion-MNIST not found: {p} is not a directory; {INSTALL_HINT}")
    return p


@functools.lru_cache(maxsize=2)
def _load(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrs = {k: read_idx(_find(root, stem)) for k, stem in FILES.items()}
    for part in ("train", "test"):
        x, y = arrs[f"{part}_images"], arrs[f"{part}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise SourceError(f"{root}: {part} images {x.shape} and labels {y.shape} are not N x 28 x 28 and N")
        if y.size and int(y.max()) > 9:
            raise SourceError(f"{root}: {part} labels outside 0..9")
    return arrs["train_images"], arrs["train_labels"], arrs["test_images"], arrs["test_labels"]


def fashion_mnist(root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: uint8 images (N, 28, 28) and uint8 labels, the official split."""
    return _load(resolve_root(root).resolve())


def available(root: str | os.PathLike | None = None) -> bool:
    """Whether the four files can be found (tests skip on machines without the package)."""
    try:
        r = resolve_root(root)
        for stem in FILES.values():
            _find(r, stem)
        return True
    except SourceError:
        return False


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28), standardised with the training set's mean and std."""
    t = torch.tensor(x, dtype=torch.float32).div_(255.0)
    return t.sub_(TRAIN_MEAN).div_(TRAIN_STD).unsqueeze(1)


def fashion_mnist_split(fraction: float = 1.0, seed: int = 0, *, root: str | os.PathLike | None = None,
                        test_limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` as tensors: a stratified ``fraction`` of the training images (drawn
    with ``seed``; the same fraction and seed always give the same images), the test set (its first
    ``test_limit`` images, or all 10,000). Images are (N, 1, 28, 28) float32 standardised with the fixed training
    mean/std; labels int64."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    if test_limit is not None and test_limit < 1:
        raise ConfigError(f"test_limit must be >= 1, got {test_limit}")
    xtr, ytr, xte, yte = fashion_mnist(root)
    if fraction < 1:
        idx = stratified_subset(ytr, fraction, np.random.default_rng([seed, 7]))
        xtr, ytr = xtr[idx], ytr[idx]
    if test_limit is not None:
        xte, yte = xte[:test_limit], yte[:test_limit]
    return (to_tensor(xtr), torch.tensor(ytr, dtype=torch.int64), to_tensor(xte),
            torch.tensor(yte, dtype=torch.int64))
