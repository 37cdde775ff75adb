"""C3: the zeta-threshold loss against a slow reference and hand-computed cases; fine-tuning a CC run."""

import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_config
from train import trainer
from train.checkpoint import read_checkpoint
from train.config import resolve_config
from train.data.defaults import DATASET_DEFAULTS
from train.losses.c3 import zeta_instance_loss
from train.methods.c3 import C3, find_latest_cc_run
from train.methods.cc import CC


def slow_zeta_loss(a: torch.Tensor, b: torch.Tensor, zeta: float, t: float) -> float:
    z = [F.normalize(r, dim=0) for r in torch.cat([a, b])]
    n, total = a.shape[0], 0.0
    for i in range(2 * n):
        pos = denom = 0.0
        for k in range(2 * n):
            cos = float(z[i] @ z[k])
            denom += math.exp(cos / t)
            if k == i or k == (i + n) % (2 * n) or cos > zeta:
                pos += math.exp(cos / t)
        total += -math.log(pos / denom)
    return total / n


def test_zeta_loss_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)  # 3-d: many pairs above zeta
    for zeta, t in ((0.6, 1.0), (0.2, 0.5), (0.9, 2.0)):
        assert zeta_instance_loss(a, b, zeta, t).item() == pytest.approx(slow_zeta_loss(a, b, zeta, t), rel=1e-5)


def _unit(angle_degrees: float) -> list[float]:
    return [math.cos(math.radians(angle_degrees)), math.sin(math.radians(angle_degrees))]


def test_zeta_decides_which_pairs_are_positive():
    # Identical views of two samples at cosine c: the four rows are x, y, x, y.
    # Each row has two rows at similarity 1 (itself, its view) and two at c.
    e = math.e
    for c in (0.7, 0.5):
        a = torch.tensor([_unit(0), _unit(math.degrees(math.acos(c)))])
        row_all = 2 * e + 2 * math.exp(c)
        if c > 0.6:  # above zeta: the other sample is positive too, every exp is in the numerator
            expected = 4 * -math.log(row_all / row_all) / 2
        else:        # below zeta: only itself and its view
            expected = 4 * -math.log(2 * e / row_all) / 2
        assert zeta_instance_loss(a, a.clone(), zeta=0.6, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(2 * math.log(1 + math.exp(0.5 - 1)))


def test_zeta_loss_bad_arguments():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="temperature"):
        zeta_instance_loss(a, a, 0.6, 0.0)
    with pytest.raises(ValueError, match="zeta"):
        zeta_instance_loss(a, a, 1.5, 1.0)
    with pytest.raises(ValueError):
        zeta_instance_loss(a, torch.randn(2, 4), 0.6, 1.0)


def test_c3_freezes_the_cluster_head_and_reports_before_and_after(tiny_run, tmp_path):
    cc_run = tiny_run("cc")
    cc_state = read_checkpoint(cc_run)
    results = trainer.train(tiny_config("c3", tmp_path / "c3", init=str(cc_run)))
    state = read_checkpoint(tmp_path / "c3")
    head = {k: v for k, v in state["model"].items() if k.startswith("cluster_head.")}
    assert head and all(torch.equal(v, cc_state["model"][k]) for k, v in head.items())
    moved = [k for k, v in state["model"].items() if k.startswith("instance_head.") and
             not torch.equal(v, cc_state["model"][k])]
    assert moved  # the rest did train
    cc_results = json.loads((cc_run / "results.json").read_text())
    assert results["metrics"]["before"]["nmi"] == cc_results["metrics"]["nmi"]
    assert results["metrics"]["after"]["nmi"] == pytest.approx(results["metrics"]["nmi"])
    assert results["metrics"]["init_checkpoint"] == str(cc_run / "last.pt")


def test_c3_optimiser_leaves_the_cluster_head_out(tmp_path):
    model = C3(tiny_config("c3", tmp_path), in_channels=1, num_clusters=10)
    optimised = {id(p) for g in model.param_groups() for p in g["params"]}
    assert all(id(p) not in optimised for p in model.cluster_head.parameters())
    assert not model.train().cluster_head.training


def test_c3_refuses_a_checkpoint_of_another_method(tiny_run, tmp_path):
    drc_run = tiny_run("drc")
    with pytest.raises(ValueError, match=r"last.pt is a drc checkpoint \(smallcnn, 10 clusters\); "
                                         r"C3 needs a CC checkpoint with smallcnn, 10 clusters"):
        trainer.train(tiny_config("c3", tmp_path / "c3", init=str(drc_run)))


def test_c3_refuses_another_architecture(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="is a cc checkpoint .*128-d embeddings.*needs .*64-d embeddings"):
        trainer.train(tiny_config("c3", tmp_path / "c3", init=str(tiny_run("cc")), feature_dim=64))


def test_latest_finished_cc_run_is_found(tiny_run, tmp_path, capsys):
    for name, age in (("old", 100), ("new", 10), ("newest-unfinished", 0)):
        run = shutil.copytree(tiny_run("cc"), tmp_path / name)
        if name.endswith("unfinished"):
            (run / "results.json").write_text(json.dumps({"finished": False, "method": "cc"}))
        os.utime(run / "results.json", (1e9 - age, 1e9 - age))
    assert find_latest_cc_run(tmp_path, "digits", "smallcnn") == tmp_path / "new"
    assert find_latest_cc_run(tmp_path, "digits", "resnet18") is None
    trainer.train(tiny_config("c3", tmp_path / "c3", epochs=1))
    assert f"latest finished CC run {tmp_path / 'new'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "c3" / "results.json").read_text())["metrics"]["init_checkpoint"] == str(
        tmp_path / "new" / "last.pt")


def test_without_a_cc_run_cc_is_trained_first(tiny_run, tmp_path, monkeypatch):
    trained = []
    real_train = trainer.train

    def fake_cc_train(cfg):  # stands in for the long CC run: copies the tiny one
        if cfg.method != "cc":
            return real_train(cfg)
        trained.append(cfg)
        shutil.copytree(tiny_run("cc"), cfg.run_dir)

    monkeypatch.setattr(trainer, "train", fake_cc_train)
    real_train(tiny_config("c3", tmp_path / "c3", epochs=1, seed=3))
    (cc_cfg,) = trained
    assert (cc_cfg.method, cc_cfg.dataset, cc_cfg.preset, cc_cfg.seed) == ("cc", "digits", "fast", 3)
    assert cc_cfg.run_dir == str(tmp_path / "cc-digits-smallcnn")
    cc_fast = resolve_config(CC.Config, CC.PRESETS, DATASET_DEFAULTS["digits"], {"preset": "fast"})
    assert (cc_cfg.instance_temperature, cc_cfg.epochs, cc_cfg.lr) == (0.5, cc_fast.epochs, cc_fast.lr)  # CC's preset
