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
                     str(seed), "--save-weights", str(p), "--threads", "1"]) == 0
    return a, b


def test_cka_between_two_models_and_one_model_with_itself(weights, tmp_path, capsys):
    a, b = weights
    out = tmp_path / "cka.json"
    assert main(["landscape", "cka", "--weights", str(a), str(b), "--samples", "150", "--layers", "1,output",
                 "--softmax", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["estimator"] == "biased" and set(res["cka"]) == {"1", "<output>"}
    entries = [e for row in res["cka"].values() for e in row.values()]
    assert all(0 <= e["cka"] <= 1 + 1e-9 and e["status"] == "ok" and e["reason"] == "" for e in entries)
    assert res["cka"]["<output>"]["<output>"]["cka"] < 1 - 1e-6  # two different seeds are not identical
    same = tmp_path / "same.csv"
    assert main(["landscape", "cka", "--weights", str(a), str(a), "--samples", "150", "--out", str(same)]) == 0
    import pandas as pd

    t = pd.read_csv(same).set_index(["layer_a", "layer_b"])  # long format: one row per pair, with its status
    assert t.loc[("<output>", "<output>"), "cka"] == pytest.approx(1.0)  # a model compared with itself
    assert t.loc[("<output>", "<output>"), "status"] == "ok"
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


def test_overflowing_radius_and_zero_head_say_why(weights, tmp_path, capsys):
    a, b = weights
    out = tmp_path / "sh.json"
    capsys.readouterr()
    assert main(["landscape", "sharpness", "--weights", str(a), "--samples", "20", "--iters", "2",
                 "--rho", "0.05,1e10", "--out", str(out)]) == 0  # one radius measured, one failed with a reason
    rows = json.loads(out.read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "failed"] and rows[1]["sharpness"] is None
    assert "not finite" in rows[1]["reason"] and "failed" in capsys.readouterr().err
    assert main(["landscape", "sharpness", "--weights", str(a), "--samples", "20", "--iters", "2",
                 "--rho", "1e10"]) == 1  # nothing measured: the measurement failed
    assert "every sharpness measurement failed" in capsys.readouterr().err
    # CKA against a model whose head is all zeros: NaN with the reason, per entry
    from safetensors.torch import load_file, save_file

    state = load_file(str(b))
    state["8.weight"].zero_()
    state["8.bias"].zero_()
    zero = tmp_path / "zero.safetensors"
    save_file(state, str(zero))
    capsys.readouterr()
    assert main(["landscape", "cka", "--weights", str(a), str(zero), "--samples", "50", "--layers", "4,output",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["cka"]
    assert res["<output>"]["<output>"]["status"] == "undefined" and res["<output>"]["<output>"]["cka"] is None
    assert "model_b's '<output>'" in res["<output>"]["<output>"]["reason"]
    assert res["4"]["4"]["status"] == "ok" and 0 < res["4"]["4"]["cka"] <= 1


BAD = [
    # argv (after "landscape"), exit code, message; {a} is a weights file, {t} a temporary directory
    (["sharpness", "--weights", "{a}", "--rho", "-1"], 2, "argument --rho"),
    (["sharpness", "--weights", "{a}", "--rho", "nan"], 2, "argument --rho"),
    (["sharpness", "--norm", "3"], 2, "norms are 2 or inf"),
    (["sharpness", "--batch-size", "0"], 2, "argument --batch-size"),
    (["cka", "--weights", "{a}", "{t}/missing.safetensors"], 2, "no such weights file"),
    (["cka", "--weights", "{a}", "{a}", "--layers", "nope"], 2, "no module named 'nope'"),
    (["cka", "--weights", "{a}", "{a}", "--layers", ",,"], 2, "expected comma-separated names"),
    (["cka", "--weights", "{a}", "{a}", "--plot", "{t}/p.png"], 2, "unrecognized arguments: --plot"),
    (["hessian", "--weights", "{a}", "--out", "{t}/h.csv"], 2, "unsupported file type '.csv'"),
    (["hessian", "--weights", "{a}", "--plot", "{t}/p.png"], 2, "--plot draws the spectral density"),
    (["hessian", "--weights", "{a}", "--density", "--plot", "{t}/p.txt"], 2, "unsupported file type '.txt'"),
    (["hessian", "--weights", "{a}", "--save-weights", "{t}/w.txt"], 2, "unsupported file type '.txt'"),
    (["surface", "--save-weights", "{t}/w.txt"], 2, "unsupported file type '.txt'"),
    (["connect", "--save-weights", "{t}/a.safetensors", "{t}/b.pt"], 2, "unsupported file type '.pt'"),
    (["hessian", "--weights", "{t}/w.txt"], 2, "expected a .safetensors file"),
    (["hessian", "--tol", "0"], 2, "argument --tol"),
    (["hessian", "--max-iter", "0"], 2, "argument --max-iter"),
    (["hessian", "--trace-matvecs", "-4"], 2, "argument --trace-matvecs"),
    (["surface", "--steps", "1"], 2, "argument --steps"),
    (["surface", "--range", "0"], 2, "argument --range"),
    (["connect", "--points", "1"], 2, "argument --points"),
    (["connect", "--samples", "0"], 2, "argument --samples"),
    (["hessian", "--seed", "-1"], 2, "argument --seed"),
    (["surface", "--epochs", "0"], 2, "argument --epochs"),
    (["hessian", "--threads", "0"], 2, "argument --threads"),
]


@pytest.mark.parametrize("argv,code,msg", BAD, ids=[" ".join(a[:1] + [m[:28]]) for a, _, m in BAD])
def test_bad_input(argv, code, msg, weights, tmp_path, capsys, monkeypatch):
    import htsr.landscape.cli as lcli

    def refuse(*a, **k):
        raise AssertionError("trained before the input was checked")

    monkeypatch.setattr(lcli, "train", refuse, raising=False)
    monkeypatch.setattr("htsr.training.train", refuse)
    a, _ = weights
    argv = ["landscape", *(x.format(a=a, t=tmp_path) for x in argv)]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert msg in err and "Traceback" not in err
    assert [ln for ln in err.strip().splitlines() if not ln.startswith(("usage:", " "))].__len__() == 1, err
    assert not list(tmp_path.iterdir())  # nothing written
