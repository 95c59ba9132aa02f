"""MD-tree populations on Fashion-MNIST: the data a configuration sees (checked against the raw files by hand),
the recipe keys of stored digits populations unchanged, bad settings, and one real tiny Fashion population
built through the command line and resumed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from htsr.cli.main import main
from htsr.data import fashion_mnist as F
from htsr.diagnosis.config import GRIDS, PopulationConfig
from htsr.diagnosis.family import family_data
from htsr.errors import ConfigError

needs_data = pytest.mark.skipif(not F.available(), reason="apt-get install dataset-fashion-mnist")


def test_digits_recipe_keys_unchanged():
    # the hashes the stored digits populations were keyed with before Fashion-MNIST was added (commit a9f6b43):
    # a folder built then still resumes, its rows still match
    assert GRIDS.get("small").recipe_id() == "16258cda16c2"
    assert GRIDS.get("tiny").recipe_id() == "e22ce207cb95"
    fashion = GRIDS.get("fashion")
    assert fashion.recipe()["dataset"] == "fashion-mnist" and fashion.recipe_id() != GRIDS.get("small").recipe_id()
    # the stored Fashion population (benchmarks/outputs/mdtree_fashion_pop) predates label_noise: same key
    assert fashion.recipe_id() == "a2abdd73c100"
    assert "label_noise" not in fashion.recipe() and GRIDS.get("fashion-noisy").recipe()["label_noise"] == 0.1
    # the device is part of the recipe only when it is not the CPU
    assert "device" not in fashion.recipe() and fashion.replace(device="cuda").recipe()["device"] == "cuda"


@pytest.mark.parametrize("sets, words", [
    ({"pool": 500}, ["pool=500", "fashion-mnist only"]),
    ({"downsample": 2}, ["downsample=2", "fashion-mnist only"]),
    ({"dataset": "cifar10"}, ["dataset", "digits, fashion-mnist"]),
    ({"dataset": "fashion-mnist", "downsample": 3}, ["downsample", "1, 2, 4"]),
    ({"dataset": "fashion-mnist", "pool": 50}, ["pool", ">= 100"]),
    ({"dataset": "fashion-mnist", "test_images": -1}, ["test_images", ">= 0"]),
    ({"device": "gpu0"}, ["device", "cuda:N"]),
    ({"label_noise": 1.0}, ["label_noise", "[0.0, 1.0)"]),
    ({"label_noise": -0.1}, ["label_noise"]),
])
def test_bad_settings_name_what_was_wrong(sets, words):
    with pytest.raises(ConfigError) as e:
        PopulationConfig(**sets)
    for w in words:
        assert w in str(e.value)


def _by_hand(x: np.ndarray, factor: int) -> np.ndarray:
    """Standardise uint8 images with the fixed training mean/std and average-pool factor x factor blocks."""
    z = (x.astype(np.float64) / 255.0 - F.TRAIN_MEAN) / F.TRAIN_STD
    n, h, w = z.shape
    return z.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


@needs_data
def test_fashion_data_is_a_stratified_pool_of_the_real_images():
    xr, yr, xtr_raw, ytr_raw = F.fashion_mnist()
    cfg = PopulationConfig(dataset="fashion-mnist", pool=1000, test_images=300, downsample=2, subset_seed=3)
    xtr, ytr, xte, yte = family_data(cfg, 0.5)
    assert xtr.shape == (500, 1, 14, 14) and xte.shape == (300, 1, 14, 14)
    assert np.bincount(ytr.numpy(), minlength=10).tolist() == [50] * 10  # stratified: 10 % pool, half of it
    # test set: the first 300 official test images, pooled by hand
    np.testing.assert_array_equal(yte.numpy(), ytr_raw[:300])
    np.testing.assert_allclose(xte[:, 0].numpy(), _by_hand(xtr_raw[:300], 2), atol=1e-5)
    # every training image is an official training image of that label (matched through its pooled pixels)
    pooled = _by_hand(xr, 2).reshape(len(xr), -1)
    got = xtr[:, 0].numpy().reshape(500, -1)
    idx = [int(np.argmin(((pooled - g) ** 2).sum(1))) for g in got[:25]]
    np.testing.assert_allclose(pooled[idx], got[:25], atol=1e-5)
    assert (yr[idx] == ytr.numpy()[:25]).all() and len(set(idx)) == 25
    # deterministic, shared by every seed, nested in the pool; full resolution without downsample
    again = family_data(cfg, 0.5)
    torch.testing.assert_close(again[0], xtr)
    full = family_data(cfg.replace(downsample=1), 1.0)
    assert full[0].shape == (1000, 1, 28, 28)
    np.testing.assert_allclose(full[0][:, 0].numpy()[:3], _by_hand(xr[np.sort(_pool_index(yr, 1000, 3))[:3]], 1),
                               atol=1e-5)


def _pool_index(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The stratified pool drawn by hand: round(size/60000 x class count) images of each class, numpy's
    ``Generator.choice`` without replacement, classes in order (the documented rule)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        out.append(rng.choice(members, size=int(round(size / y.size * members.size)), replace=False))
    return np.concatenate(out)


@needs_data
def test_tiny_fashion_population_through_the_cli(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "pop"
    args = ["mdtree", "population", "--grid", "fashion-tiny", "--out-dir", str(out), "--no-models", "--json"]
    assert main([*args, "--max-configs", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["trained"] == 1 and first["finished"] == 1
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["trained"] == GRIDS.get("fashion-tiny").n_configs - 1 and second["resumed"] == 1
    pop = pd.read_csv(out / "population.csv")
    cfg = GRIDS.get("fashion-tiny")
    assert len(pop) == cfg.n_configs
    # data_amount is the stratified share of the pool; the features are finite and in the paper's units
    expected = {d: int(sum(round(d * round(cfg.pool / 60000 * 6000)) for _ in range(10))) for d in cfg.data_fractions}
    assert sorted(set(pop["data_amount"])) == sorted(set(expected.values()))
    for c in ("train_error", "test_acc", "mode_connectivity_peak", "hessian_t", "CKA"):
        assert np.isfinite(pop[c]).all(), c
    assert ((pop["train_error"] >= 0) & (pop["train_error"] <= 100)).all()
    assert (pop["test_acc"] > 10.0).all()  # better than chance on 10 classes after training


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_preset_without_cuda_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "pop"
    assert main(["mdtree", "population", "--grid", "fashion-full", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "device=cuda" in err and "CUDA is not available" in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.gpu
@needs_data
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_fashion_population_on_cuda(tmp_path):
    from htsr.diagnosis.own_population import build_population

    pop = build_population(GRIDS.get("fashion-tiny").replace(device="cuda"), tmp_path / "pop", progress=False)
    assert len(pop) == 2 and np.isfinite(pop["hessian_t"]).all() and (pop["test_acc"] > 10).all()


def test_noisy_labels_change_exactly_that_many_to_another_class():
    from htsr.diagnosis.family import noisy_labels

    y = torch.arange(1000) % 10
    z = noisy_labels(y, 0.1, seed=4)
    wrong = (z != y)
    assert int(wrong.sum()) == 100 and z.min() >= 0 and z.max() <= 9
    assert torch.equal(noisy_labels(y, 0.1, seed=4), z) and not torch.equal(noisy_labels(y, 0.1, seed=5), z)
    assert torch.equal(y, torch.arange(1000) % 10)  # input untouched
    # the new labels are spread over the other classes (each of the 9 shifts drawn)
    assert len(set(((z[wrong] - y[wrong]) % 10).tolist())) == 9


def test_label_noise_touches_only_the_training_labels():
    cfg = PopulationConfig(label_noise=0.2)  # digits
    clean, noisy = family_data(PopulationConfig(), 1.0), family_data(cfg, 1.0)
    torch.testing.assert_close(noisy[0], clean[0])
    torch.testing.assert_close(noisy[2], clean[2])
    assert torch.equal(noisy[3], clean[3])
    assert int((noisy[1] != clean[1]).sum()) == round(0.2 * clean[1].numel())
