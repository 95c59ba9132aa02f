"""Training, resuming and evaluating tiny ensembles on real Fashion-MNIST, and the ``htsr sharpbalance`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from htsr.cli.main import main
from htsr.data import fashion_mnist as fm

pytestmark = [pytest.mark.skipif(not fm.available(), reason="Fashion-MNIST files not installed"),
              pytest.mark.usefixtures("torch_one_thread_module")]

TINY = dict(train_size=300, width=2, epochs=2, initial_epochs=1, batch_size=64, test_size=100, corrupt_size=20,
            corruptions=("contrast", "gaussian_noise"), severities=(1, 5), sharpness_batches=2, sharpness_iters=3,
            score_batch_size=50)
SETS = [x for k, v in TINY.items() for x in ("--set", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fmnist-c"))


def _cfg(cache, **kw):
    from htsr.ensembles.config import preset_config

    return preset_config("cpu", {**TINY, "cache_dir": cache, **kw})


def _state(path):
    from htsr.ensembles.model import load_member

    return load_member(path)[0].state_dict()


def test_resumed_member_equals_uninterrupted(tmp_path, cache):
    from htsr.ensembles.ensemble import train_member

    conf = _cfg(cache).to_dict()
    a = train_member(conf, 0, 1, str(tmp_path / "a"), "sam", 2)
    train_member(conf, 0, 1, str(tmp_path / "b"), "sam", 1)
    b = train_member(conf, 0, 1, str(tmp_path / "b"), "sam", 2)
    sa, sb = _state(a["checkpoint"]), _state(b["checkpoint"])
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert [h["epoch"] for h in b["history"]] == [1, 2]
    assert (tmp_path / "b" / "member1" / "sam" / "epoch_0001").is_dir()  # the phase-1 snapshot is kept


def test_sharpbalance_pipeline_and_evaluation(tmp_path, cache):
    from htsr.ensembles.ensemble import evaluate_ensemble, final_members, load_ensemble, train_ensemble

    cfg = _cfg(cache)
    info = train_ensemble(cfg, 0, tmp_path)
    assert info["lineage"].startswith("sb-") and len(info["members"]) == 3
    assert 0 < min(info["split"]["sam_fraction"]) <= max(info["split"]["sam_fraction"]) < 1
    scores = np.load(tmp_path / "member0" / "sam" / "scores_epoch_0001.npy", allow_pickle=False)
    assert scores.shape == (300,) and np.all(scores >= 0)
    hist = info["histories"][0]
    assert [h["optimizer"] for h in hist] == ["sam", "mixed"]
    # the SAM ensemble continues the same phase-1 lineage: epoch 1 is reused, epoch 2 trained
    sam = train_ensemble(cfg.replace(method="sam_ensemble"), 0, tmp_path)
    assert [h["optimizer"] for h in sam["histories"][0]] == ["sam", "sam"]
    models, _ = load_ensemble(final_members(cfg, tmp_path))
    ev = evaluate_ensemble(models, cfg, 0)
    s = ev["summary"]
    assert ev["ood"]["n_sets"] == 4 and set(ev["ood"]["by_family"]) == {"contrast", "gaussian_noise"}
    for k in ("clean_ensemble_accuracy", "ood_ensemble_accuracy", "clean_ensemble_ece", "ood_ensemble_nll",
              "clean_disagreement", "clean_der", "clean_prediction_variance", "clean_kl", "clean_cka",
              "sharpness_p2"):
        assert np.isfinite(s[k]), k
    assert 0 <= s["clean_ensemble_accuracy"] <= 1 and s["sharpness_p2"] >= 0
    assert len(ev["sharpness"]["members"]["2"]) == 3


def test_parallel_members_equal_sequential(tmp_path, cache):
    from htsr.ensembles.ensemble import train_ensemble

    cfg = _cfg(cache, method="deep_ensemble", n_members=2, epochs=1)
    a = train_ensemble(cfg, 5, tmp_path / "seq")
    b = train_ensemble(cfg.replace(parallel=2), 5, tmp_path / "par")
    for pa, pb in zip(a["members"], b["members"], strict=True):
        sa, sb = _state(pa), _state(pb)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_corrupted_checkpoint_and_mixed_architectures(tmp_path, cache):
    from htsr.ensembles.ensemble import load_ensemble, train_member
    from htsr.ensembles.model import EnsembleError

    conf = _cfg(cache).to_dict()
    r = train_member(conf, 0, 0, str(tmp_path / "r"), "sgd", 1)
    w = train_member(_cfg(cache, width=3).to_dict(), 0, 1, str(tmp_path / "w"), "sgd", 1)
    with pytest.raises(EnsembleError, match="different architectures"):
        load_ensemble([r["checkpoint"], w["checkpoint"]])
    with pytest.raises(EnsembleError, match="at least 2 members"):
        load_ensemble([r["checkpoint"]])
    (tmp_path / "r" / "member0" / "sgd" / "epoch_0001" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(EnsembleError, match="corrupted") as e:
        train_member(conf, 0, 0, str(tmp_path / "r"), "sgd", 2)
    assert "\n" not in str(e.value)
    # a checkpoint written with other training settings is not resumed silently
    with pytest.raises(EnsembleError, match="different training settings"):
        train_member(_cfg(cache, lr=0.01).to_dict(), 0, 1, str(tmp_path / "w"), "sgd", 2)


# ----------------------------------------------------------------------------------- CLI
def test_cli_train_evaluate_compare(tmp_path, cache, capsys):
    d = tmp_path / "ens"
    common = [*SETS, "--cache-dir", cache, "--threads", "1"]
    assert main(["sharpbalance", "train", "--method", "sam_ensemble", *common, "--out-dir", str(d)]) == 0
    doc = json.loads((d / "ensemble.json").read_text())
    assert doc["status"] == "done" and len(doc["members"]) == 3
    assert main(["sharpbalance", "train", "--method", "sam_ensemble", *common, "--out-dir", str(d)]) == 0
    assert "resuming" in capsys.readouterr().err
    out, png = tmp_path / "eval.json", tmp_path / "eval.png"
    assert main(["sharpbalance", "evaluate", str(d), "-o", str(out), "--plot", str(png), "--json",
                 "--cache-dir", cache]) == 0
    ev = json.loads(out.read_text())
    assert set(ev) >= {"summary", "clean", "ood", "sharpness"} and png.stat().st_size > 1000
    assert json.loads(capsys.readouterr().out)["clean_ensemble_accuracy"] == ev["summary"]["clean_ensemble_accuracy"]
    csv = tmp_path / "eval.csv"
    assert main(["sharpbalance", "evaluate", *[str(d / m) for m in doc["members"][:2]], "--preset", "cpu",
                 *common, "-o", str(csv)]) == 0
    assert csv.read_text().count("\n") == 1 + 2 * 2 + 1
    cmp_dir, summ, plot = tmp_path / "cmp", tmp_path / "summary.csv", tmp_path / "cmp.png"
    argv = ["sharpbalance", "compare", "--methods", "deep_ensemble,sharpbalance", "--seeds", "0", *common,
            "--set", "n_members=2", "--out-dir", str(cmp_dir), "-o", str(summ), "--plot", str(plot)]
    assert main(argv) == 0
    import pandas as pd

    s = pd.read_csv(summ)
    assert set(s["method"]) == {"deep_ensemble", "sharpbalance"} and {"mean", "std", "n"} <= set(s.columns)
    assert plot.stat().st_size > 1000 and (cmp_dir / "results.csv").is_file()
    capsys.readouterr()
    assert main(argv) == 0  # resumes: nothing left to run
    assert "resuming" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["--set", "k=1.5"], "k must be in the open interval (0, 1)"),
    (["--set", "k=0"], "k must be in the open interval (0, 1)"),
    (["--set", "rho=0"], "rho must be > 0"),
    (["--set", "rho=-0.05"], "rho must be > 0"),
    (["--set", "n_members=1"], "at least 2 members"),
    (["--data", "/nonexistent/fmnist"], "Fashion-MNIST not found"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    code = main(["sharpbalance", "train", *SETS, *args, "--out-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_members_and_corrupted_checkpoint(tmp_path, cache, capsys):
    from htsr.ensembles.ensemble import train_member

    conf = _cfg(cache).to_dict()
    a = train_member(conf, 0, 0, str(tmp_path / "a"), "sgd", 1)["checkpoint"]
    b = train_member(_cfg(cache, width=3).to_dict(), 0, 1, str(tmp_path / "b"), "sgd", 1)["checkpoint"]
    for argv, needle in ((["evaluate", a], "at least 2 members"),
                         (["evaluate", a, b], "different architectures"),
                         (["evaluate", a, str(tmp_path / "nope")], "does not exist")):
        assert main(["sharpbalance", *argv, "--cache-dir", cache]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    d = tmp_path / "ens"
    common = [*SETS, "--cache-dir", cache, "--set", "epochs=1", "--set", "n_members=2"]
    assert main(["sharpbalance", "train", "--method", "deep_ensemble", *common, "--out-dir", str(d)]) == 0
    capsys.readouterr()
    (d / "member0" / "sgd" / "epoch_0001" / "model.safetensors").write_bytes(b"broken")
    assert main(["sharpbalance", "evaluate", str(d), "--cache-dir", cache]) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and err.count("\n") == 1
    # another configuration in the same directory is refused, not mixed in
    assert main(["sharpbalance", "train", "--method", "deep_ensemble", *common, "--set", "lr=0.01",
                 "--out-dir", str(d)]) == 2
    assert "different configuration" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_paper_preset_smoke_on_gpu(tmp_path):
    """The paper preset (ResNet-18 width 64) on a GPU: two epochs of each phase on a 2,000-image subset, the
    scorer on the whole subset, evaluation; and the phase-2 step no slower than 1.1x a SAM step."""
    import time

    from htsr.ensembles.config import preset_config
    from htsr.ensembles.ensemble import (
        evaluate_ensemble,
        final_members,
        load_ensemble,
        make_optimizer,
        train_ensemble,
    )
    from htsr.ensembles.model import build_model

    cfg = preset_config("paper", train_size=2000, epochs=2, initial_epochs=1, test_size=500, corrupt_size=100,
                        sharpness_batches=5, cache_dir=str(tmp_path / "c"))
    info = train_ensemble(cfg, 0, tmp_path / "run")
    models, _ = load_ensemble(final_members(cfg, tmp_path / "run"), "cuda")
    ev = evaluate_ensemble(models, cfg, 0)
    assert ev["summary"]["clean_ensemble_accuracy"] > 0.3 and "score_s" in info["timings"]
    model = build_model("resnet18", 64, 0).cuda()
    x = torch.randn(128, 1, 28, 28, device="cuda")
    y = torch.randint(0, 10, (128,), device="cuda")
    mask = torch.rand(128, device="cuda") < 0.7

    def timed(kind, batch, reps=20):
        opt = make_optimizer(cfg, model, kind)
        from htsr.training import train

        loss = opt.loss if kind == "mixed" else None
        train(model, [batch] * 3, opt, loss_fn=loss, epochs=1, progress=False)
        torch.cuda.synchronize()
        t = time.perf_counter()
        train(model, [batch] * reps, opt, loss_fn=loss, epochs=1, progress=False)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / reps

    sam, mixed = timed("sam", (x, y)), timed("mixed", (x, y, mask))
    assert mixed <= 1.1 * sam, (mixed, sam)
