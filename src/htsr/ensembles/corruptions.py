"""Fashion-MNIST-C: CIFAR-10-C-style corruptions of the Fashion-MNIST test set (15 families x 5 severities),
deterministic, seeded, cached on disk.

The families and their severity constants are those of Hendrycks & Dietterich's CIFAR-10-C generator
(``make_cifar_c.py`` in hendrycks/robustness), re-implemented here with numpy, scipy.ndimage and Pillow for
28x28 grey images (image-size constants scaled from 32 to 28). Of CIFAR-10-C's 15 benchmark corruptions, 13
apply to grey 28x28 images as they are; *snow* and *frost* need colour and the frost photographs, so they are
replaced by CIFAR-10-C's two extra corruptions, *speckle noise* and *Gaussian blur*:

========================  =====================================================================================
family                    severity 1..5
========================  =====================================================================================
gaussian_noise            x + N(0, c^2), c = .04 .06 .08 .09 .10
shot_noise                Poisson(x c) / c, c = 500 250 100 75 50
impulse_noise             salt & pepper on a fraction c = .01 .02 .03 .05 .07 of the pixels
speckle_noise             x + x N(0, c^2), c = .06 .10 .12 .16 .20
gaussian_blur             Gaussian filter, sigma = .4 .6 .7 .8 1
defocus_blur              disk kernel of radius .3 .4 .5 1 1.5, anti-aliased by a 3x3 Gaussian (sigma .4 .5 .6 .2 .1)
glass_blur                blur (sigma .05 .25 .4 .25 .4), local pixel swaps (1 1 1 2 2 passes), blur again
motion_blur               one-sided Gaussian line kernel (ImageMagick's motion blur), radius 6 6 6 8 9, sigma
                          1 1.5 2 2 2.5, angle uniform in [-45, 45] degrees
zoom_blur                 mean of the image and its centre zooms by 1, 1.01, ... up to 1.05 1.10 1.15 1.20 1.25
fog                       plus c * plasma fractal (diamond-square, decay d), c, d = (.2,3) (.5,3) (.75,2.5) (1,2)
                          (1.5,1.75), rescaled by max / (max + c)
brightness                x + c, c = .05 .1 .15 .2 .3 (the HSV value channel of a grey image)
contrast                  (x - mean) c + mean, c = .75 .5 .4 .3 .15
elastic_transform         random affine (corners moved by up to .08 .07 .06 .05 .03 x 28 px), then a smoothed random
                          displacement field (alpha, sigma in units of 28 px: (0,0) (.05,.2) (.08,.06) (.1,.04)
                          (.1,.03))
pixelate                  box-downsample to 28c pixels and back, c = .95 .9 .85 .75 .65
jpeg_compression          JPEG (Pillow/libjpeg) at quality 80 65 58 50 40
========================  =====================================================================================

Pixel values are in [0, 1] during a corruption and stored as uint8 (truncated, as the reference does). Every
random draw comes from ``numpy.random.default_rng([seed, crc32(family), severity])``: the same (family, severity,
seed, images) always gives the same bytes, and adding a family changes no other.

**Cache**: ``$HTSR_CACHE_DIR/fashion-mnist-c/v1/seed{seed}/n{n}/{family}.npy`` (default cache dir
``$XDG_CACHE_HOME/htsr`` or ``~/.cache/htsr``), one uint8 array (5, n, 28, 28) per family, the severities in
order, plus ``labels.npy`` and ``meta.json`` (SHA-256 of the source images and of each file). Files are written
atomically (a temporary file renamed into place), read with ``allow_pickle=False`` and checked against
``meta.json``; a file that fails the check is regenerated.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from htsr.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

VERSION = "v1"
SIZE = 28
CACHE_ENV = "HTSR_CACHE_DIR"

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
_REGISTRY: dict[str, Corruption] = {}


def _family(fn: Corruption) -> Corruption:
    _REGISTRY[fn.__name__] = fn
    return fn


def _c(values: Sequence[Any], severity: int) -> Any:
    return values[severity - 1]


# ----------------------------------------------------------------------------------- noise
@_family
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _c([0.04, 0.06, 0.08, 0.09, 0.10], severity)
    return x + rng.normal(scale=c, size=x.shape)


@_family
def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _c([500, 250, 100, 75, 50], severity)
    return rng.poisson(x * c) / c


@_family
def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _c([0.01, 0.02, 0.03, 0.05, 0.07], severity)
    flipped = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out


@_family
def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _c([0.06, 0.10, 0.12, 0.16, 0.20], severity)
    return x + x * rng.normal(scale=c, size=x.shape)


# ----------------------------------------------------------------------------------- blur
def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    """Per-image Gaussian filter (skimage.filters.gaussian defaults: mode nearest, truncate 4)."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest", truncate=4.0)


@_family
def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return _gauss(x, _c([0.4, 0.6, 0.7, 0.8, 1.0], severity))


@_family
def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, passes = _c([(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], severity)
    img = np.floor(np.clip(_gauss(x, sigma), 0, 1) * 255).astype(np.uint8)
    n = img.shape[0]
    rows = np.arange(n)
    for _ in range(passes):
        # the reference's sequential swap sweep, bottom-right to top-left, vectorised over images
        for h in range(SIZE - delta, delta, -1):
            for w in range(SIZE - delta, delta, -1):
                d = rng.integers(-delta, delta, size=(2, n))  # high exclusive, as np.random.randint
                hp, wp = h + d[1], w + d[0]
                a = img[rows, h, w].copy()
                img[rows, h, w] = img[rows, hp, wp]
                img[rows, hp, wp] = a
    return _gauss(img / 255.0, sigma)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    ax = np.arange(-8, 9) if radius <= 8 else np.arange(-int(radius), int(radius) + 1)
    xx, yy = np.meshgrid(ax, ax)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    half = ksize // 2
    g = np.exp(-(np.arange(-half, half + 1) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    # OpenCV GaussianBlur: separable, BORDER_REFLECT_101 (scipy 'mirror')
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


@_family
def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias = _c([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], severity)
    k = _disk(radius, alias)
    return ndimage.correlate(x, k[None], mode="mirror")


@_family
def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = _c([(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], severity)
    n = x.shape[0]
    width = 2 * radius + 1
    i = np.arange(width)
    weights = np.exp(-(i**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    angle = np.deg2rad(rng.uniform(-45, 45, size=n))
    # ImageMagick MotionBlurImage: pixel offsets along (cos, sin) of the angle, rounded, edge pixels repeated
    ox = np.ceil(i[None, :] * np.cos(angle)[:, None] - 0.5).astype(np.int64)  # (n, width)
    oy = np.ceil(i[None, :] * np.sin(angle)[:, None] - 0.5).astype(np.int64)
    rr, cc = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    out = np.zeros_like(x)
    rows = np.arange(n)[:, None, None]
    for t in range(width):
        r = np.clip(rr[None] + oy[:, t, None, None], 0, SIZE - 1)
        c = np.clip(cc[None] + ox[:, t, None, None], 0, SIZE - 1)
        out += weights[t] * x[rows, r, c]
    return out


def _clipped_zoom(x: np.ndarray, z: float) -> np.ndarray:
    ch = int(np.ceil(SIZE / z))
    top = (SIZE - ch) // 2
    img = ndimage.zoom(x[:, top:top + ch, top:top + ch], (1, z, z), order=1)
    trim = (img.shape[1] - SIZE) // 2
    return img[:, trim:trim + SIZE, trim:trim + SIZE]


@_family
def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    top = _c([1.06, 1.11, 1.16, 1.21, 1.26], severity)
    zooms = np.arange(1, top, 0.01)
    out = np.zeros_like(x)
    for z in zooms:
        out += _clipped_zoom(x, float(z))
    return (x + out) / (len(zooms) + 1)


# ----------------------------------------------------------------------------------- weather / digital
def _plasma(n: int, rng: np.random.Generator, decay: float, mapsize: int = 32) -> np.ndarray:
    """(n, mapsize, mapsize) diamond-square height maps in [0, 1] (one per image)."""
    m = np.zeros((n, mapsize, mapsize))
    step = mapsize
    wibble = 100.0

    def wibbled(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        h = step // 2
        corners = m[:, 0:mapsize:step, 0:mapsize:step]
        sq = corners + np.roll(corners, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, h:mapsize:step, h:mapsize:step] = wibbled(sq)
        dr = m[:, h:mapsize:step, h:mapsize:step]
        ul = m[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        m[:, 0:mapsize:step, h:mapsize:step] = wibbled(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        m[:, h:mapsize:step, 0:mapsize:step] = wibbled(tt)
        step //= 2
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


@_family
def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c, decay = _c([(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], severity)
    mx = x.max(axis=(1, 2), keepdims=True)
    y = x + c * _plasma(x.shape[0], rng, decay)[:, :SIZE, :SIZE]
    return y * mx / (mx + c)


@_family
def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return x + _c([0.05, 0.1, 0.15, 0.2, 0.3], severity)


@_family
def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _c([0.75, 0.5, 0.4, 0.3, 0.15], severity)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * c + mean


@_family
def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    alpha, sigma, affine = (v * SIZE for v in _c(
        [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)], severity))
    center = SIZE // 2
    sq = SIZE // 3
    # (x, y) points as OpenCV's getAffineTransform takes them
    pts1 = np.array([[center + sq, center + sq], [center + sq, center - sq], [center - sq, center - sq]], float)
    rr, cc = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    out = np.empty_like(x)
    for k in range(x.shape[0]):
        pts2 = pts1 + rng.uniform(-affine, affine, size=pts1.shape)
        # forward map src (x, y, 1) -> dst; warpAffine samples src at the inverse image of each dst pixel
        a = np.linalg.solve(np.c_[pts1, np.ones(3)], pts2).T  # 2x3: dst = A [x, y, 1]
        inv = np.linalg.inv(np.vstack([a, [0, 0, 1]]))
        # scipy wants (row, col) = (y, x): swap the axes of the inverse map
        perm = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float)
        inv_rc = perm @ inv @ perm
        img = ndimage.affine_transform(x[k], inv_rc[:2, :2], offset=inv_rc[:2, 2], order=1, mode="mirror")
        dx = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(SIZE, SIZE)), sigma, mode="reflect", truncate=3) * alpha
        dy = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(SIZE, SIZE)), sigma, mode="reflect", truncate=3) * alpha
        out[k] = ndimage.map_coordinates(img, [rr + dy, cc + dx], order=1, mode="reflect")
    return out


def _pil_each(x: np.ndarray, fn: Callable[[Any], Any]) -> np.ndarray:
    from PIL import Image

    u8 = np.floor(np.clip(x, 0, 1) * 255).astype(np.uint8)
    out = np.empty(x.shape, dtype=np.float64)
    for k in range(x.shape[0]):
        out[k] = np.asarray(fn(Image.fromarray(u8[k], mode="L")), dtype=np.float64) / 255.0
    return out


@_family
def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    s = int(SIZE * _c([0.95, 0.9, 0.85, 0.75, 0.65], severity))
    return _pil_each(x, lambda im: im.resize((s, s), Image.BOX).resize((SIZE, SIZE), Image.BOX))


def jpeg_available() -> bool:
    """Whether Pillow can write JPEG here (it needs libjpeg)."""
    try:
        from PIL import features

        return bool(features.check("jpg"))
    except Exception:  # pragma: no cover - Pillow missing or broken
        return False


@_family
def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    if not jpeg_available():
        raise SourceError("jpeg_compression needs Pillow built with libjpeg, which this Python lacks; "
                          "leave the family out (corruptions=...)")
    q = _c([80, 65, 58, 50, 40], severity)

    def enc(im: Any) -> Any:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q)
        buf.seek(0)
        return Image.open(buf).convert("L")

    return _pil_each(x, enc)


#: every family, in the order of the table above
FAMILIES: tuple[str, ...] = tuple(_REGISTRY)


# ----------------------------------------------------------------------------------- the API
def _rng(family: str, severity: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(family.encode()), int(severity)])


def _check_family(family: str) -> None:
    if family not in _REGISTRY:
        raise ConfigError(f"unknown corruption {family!r}; expected one of {', '.join(FAMILIES)}")


def corrupt(images: np.ndarray, family: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt uint8 images (n, 28, 28) with one family at one severity (1..5); returns uint8 (n, 28, 28)."""
    _check_family(family)
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or not 1 <= severity <= 5:
        raise ConfigError(f"severity must be an integer in 1..5, got {severity!r}")
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.shape[1:] != (SIZE, SIZE) or arr.dtype != np.uint8:
        raise ConfigError(f"images must be uint8 (n, 28, 28), got {arr.dtype} {arr.shape}")
    x = arr.astype(np.float64) / 255.0
    y = _REGISTRY[family](x, int(severity), _rng(family, int(severity), seed))
    return np.floor(np.clip(y, 0, 1) * 255).astype(np.uint8)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$HTSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/htsr`` or
    ``~/.cache/htsr``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "htsr"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _save_npy(path: Path, arr: np.ndarray) -> str:
    from htsr.io import atomic_write

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return _sha(data)


def _load_npy(path: Path, sha: str | None) -> np.ndarray | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if sha is not None and _sha(data) != sha:
        return None
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError):
        return None


def fashion_mnist_c(
    family: str,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    *,
    n: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: uint8 (len(severities), n, 28, 28) corrupted copies of the first ``n`` Fashion-MNIST
    test images (all 10,000 when None or 0), and their labels (n,). Generated once per (family, seed, n) for
    all five severities and cached (see the module docstring); ``cache=False`` neither reads nor writes it."""
    from htsr.data.fashion_mnist import fashion_mnist

    _check_family(family)
    sev = [int(s) for s in severities]
    if not sev or any(not 1 <= s <= 5 for s in sev):
        raise ConfigError(f"severities must be a non-empty list of integers in 1..5, got {list(severities)}")
    _, _, xte, yte = fashion_mnist(root)
    total = xte.shape[0]
    if n is not None and n != 0:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 0 < n <= total:
            raise ConfigError(f"n must be in 1..{total} (or None for all), got {n!r}")
        xte, yte = xte[:n], yte[:n]
    nn = xte.shape[0]
    src_sha = _sha(np.ascontiguousarray(xte).tobytes())
    if not cache:
        arr = np.stack([corrupt(xte, family, s, seed) for s in range(1, 6)])
        return arr[[s - 1 for s in sev]], yte.astype(np.int64)
    d = cache_root(cache_dir) / "fashion-mnist-c" / VERSION / f"seed{int(seed)}" / f"n{nn}"
    meta_path = d / "meta.json"
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
    if meta.get("source_sha256") != src_sha:
        meta = {"format": "htsr.fashion-mnist-c/1", "version": VERSION, "seed": int(seed), "n": nn,
                "source_sha256": src_sha, "files": {}}
    files = meta.setdefault("files", {})
    arr = _load_npy(d / f"{family}.npy", files.get(family)) if family in files else None
    if arr is not None and (arr.dtype != np.uint8 or arr.shape != (5, nn, SIZE, SIZE)):
        arr = None
    if arr is None:
        if family in files:
            log.warning("cached %s is missing or does not match its checksum; regenerating", d / f"{family}.npy")
        arr = np.stack([corrupt(xte, family, s, seed) for s in range(1, 6)])
        files[family] = _save_npy(d / f"{family}.npy", arr)
        if "labels" not in files or _load_npy(d / "labels.npy", files.get("labels")) is None:
            files["labels"] = _save_npy(d / "labels.npy", yte.astype(np.uint8))
        _write_meta(meta_path, d, meta)
    return arr[[s - 1 for s in sev]], yte.astype(np.int64)


def _write_meta(meta_path: Path, d: Path, meta: dict[str, Any]) -> None:
    """Merge with what another process may have written meanwhile (same source), then write atomically."""
    from htsr.io import write_json

    try:
        other = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, ValueError):
        other = {}
    if other.get("source_sha256") == meta["source_sha256"]:
        for k, v in other.get("files", {}).items():
            if k not in meta["files"] and (d / f"{k}.npy").is_file():
                meta["files"][k] = v
    write_json(meta_path, meta)
