"""``htsr landscape cka`` and ``htsr landscape sharpness`` on the built-in digits recipe (and saved weights)."""

from __future__ import annotations

import json

import pytest

from htsr.cli.main import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    a, b = d / "a.safetensors", d / "b.safetensors"
    for seed, p in ((0, a), (1, b)):
        assert main(["landscape", "hessian", "--epochs", "1", "--samples", "16", "--max-iter", "2", "--seed",
                     str(seed), "--save-weights", str(p)]) == 0
    return a, b


def test_cka_between_two_models_and_one_model_with_itself(weights, tmp_path, capsys):
    a, b = weights
    out = tmp_path / "cka.json"
    assert main(["landscape", "cka", "--weights", str(a), str(b), "--samples", "150", "--layers", "1,output",
                 "--softmax", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["estimator"] == "biased" and set(res["cka"]) == {"1", "<output>"}
    vals = [v for row in res["cka"].values() for v in row.values()]
    assert all(0 <= v <= 1 + 1e-9 for v in vals)
    assert res["cka"]["<output>"]["<output>"] < 1 - 1e-6  # two different seeds are not identical
    same = tmp_path / "same.csv"
    assert main(["landscape", "cka", "--weights", str(a), str(a), "--samples", "150", "--out", str(same)]) == 0
    import pandas as pd

    t = pd.read_csv(same).set_index("layer_a")
    assert t.loc["<output>", "<output>"] == pytest.approx(1.0)  # a model compared with itself
    assert "linear CKA" in capsys.readouterr().out


def test_sharpness_grows_with_radius(weights, tmp_path):
    a, _ = weights
    out = tmp_path / "sh.json"
    assert main(["landscape", "sharpness", "--weights", str(a), "--samples", "100", "--iters", "3",
                 "--rho", "0.05,0.5", "--norm", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["rho"] for r in rows] == [0.05, 0.5]
    assert 0 <= rows[0]["sharpness"] < rows[1]["sharpness"]


def test_sample_counts_are_the_ones_asked_for(weights, tmp_path, capsys):
    a, b = weights
    out = tmp_path / "sh.json"
    assert main(["landscape", "sharpness", "--weights", str(a), "--samples", "12", "--batch-size", "5",
                 "--iters", "1", "--norm", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["n_batches"] == 3  # 5 + 5 + 2, every batch used
    assert "(3 batches" in capsys.readouterr().out
    out = tmp_path / "c.json"
    assert main(["landscape", "connect", "--weights", str(a), str(b), "--samples", "150", "--curve", "linear",
                 "--points", "3", "--out", str(out)]) == 0
    errors = json.loads(out.read_text())["linear"]["error"]
    assert all(round(e * 150) == pytest.approx(e * 150, abs=1e-9) for e in errors)  # fractions of 150 samples


def test_bad_input(weights, tmp_path, capsys):
    a, _ = weights
    assert main(["landscape", "sharpness", "--weights", str(a), "--rho", "-1"]) == 2
    assert main(["landscape", "cka", "--weights", str(a), str(tmp_path / "missing.safetensors")]) == 2
    assert main(["landscape", "cka", "--weights", str(a), str(a), "--layers", "nope"]) == 2
    with pytest.raises(SystemExit):
        main(["landscape", "sharpness", "--norm", "3"])
    assert main(["landscape", "hessian", "--weights", str(a), "--out", str(tmp_path / "h.csv")]) == 2  # JSON only
    assert main(["landscape", "hessian", "--weights", str(a), "--plot", str(tmp_path)]) == 2  # needs --density
    with pytest.raises(SystemExit):  # nothing to plot: no --plot option
        main(["landscape", "cka", "--weights", str(a), str(a), "--plot", str(tmp_path)])
    capsys.readouterr()
