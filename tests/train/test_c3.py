"""C3: the zeta-threshold loss against a slow reference and hand-computed cases; fine-tuning a CC run."""

import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from contract.runs import finished_runs
from tests.support.runs import tiny_config
from train import trainer
from train.checkpoint import read_checkpoint
from train.losses.c3 import zeta_instance_loss
from train.methods import make_config
from train.methods.c3 import C3
from train.parents import ParentRunMissing, find_parent, parent_command


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
    # measured on the initialised model: the same weights and data give CC's own figures
    assert results["metrics"]["before"]["nmi"] == pytest.approx(cc_results["metrics"]["nmi"], abs=1e-12)
    assert results["metrics"]["after"]["nmi"] == pytest.approx(results["metrics"]["nmi"])
    assert results["metrics"]["init_checkpoint"] == str(cc_run / "last.pt")


def test_c3_also_reports_the_score_where_the_official_code_scores_last(tiny_run, tmp_path, capsys):
    """The official main.py evaluates before each epoch: its last figure is after epochs - 1 epochs. With
    eval_every 1 (the presets') that evaluation is in metrics.jsonl; results.json and the log name it."""
    results = trainer.train(tiny_config("c3", tmp_path, init=str(tiny_run("cc")), epochs=3, eval_every=1))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    after_two = next(r for r in records if r["epoch"] == 2)
    official = results["metrics"]["before_last_epoch"]
    assert official == {"epochs": 2, **{k: after_two[k] for k in ("nmi", "acc", "ari", "clusters_used")}}
    assert results["metrics"]["after"]["nmi"] == results["metrics"]["nmi"]  # the score after training, apart
    assert f"c3 after 2 of 3 epochs, where the official code scores last (before each epoch): " \
           f"NMI {official['nmi']:.4f}" in capsys.readouterr().out
    assert make_config("c3", dataset="cifar10", preset="paper").eval_every == 1


def test_c3_optimiser_leaves_the_cluster_head_out(tmp_path):
    model = C3(tiny_config("c3", tmp_path), in_channels=1, num_clusters=10)
    optimised = {id(p) for g in model.param_groups() for p in g["params"]}
    assert all(id(p) not in optimised for p in model.cluster_head.parameters())
    assert not model.train().cluster_head.training


def test_c3_refuses_a_checkpoint_of_another_method(tiny_run, tmp_path):
    drc_run = tiny_run("drc")
    with pytest.raises(ValueError, match=r"last.pt is a drc checkpoint \(smallcnn, 10 clusters\); "
                                         r"c3 needs a cc checkpoint with smallcnn, 10 clusters"):
        trainer.train(tiny_config("c3", tmp_path / "c3", init=str(drc_run)))


def test_c3_refuses_another_architecture(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="is a cc checkpoint .*128-d embeddings.*needs .*64-d embeddings"):
        trainer.train(tiny_config("c3", tmp_path / "c3", init=str(tiny_run("cc")), feature_dim=64))


def test_latest_matching_cc_run_is_found(tiny_run, tmp_path, capsys):
    for name, age in (("old", 100), ("new", 10), ("newest-unfinished", 0)):
        run = shutil.copytree(tiny_run("cc"), tmp_path / name)
        if name.endswith("unfinished"):
            (run / "results.json").write_text(json.dumps({"finished": False, "method": "cc"}))
        os.utime(run / "results.json", (1e9 - age, 1e9 - age))
    assert find_parent(tiny_config("c3", tmp_path / "c3"), "cc", tmp_path) == tmp_path / "new" / "last.pt"
    # the architecture comes from the config dataclasses: another embedding size matches no run
    assert find_parent(tiny_config("c3", tmp_path / "c3", feature_dim=64), "cc", tmp_path) is None
    assert [r.path.name for r in finished_runs(tmp_path, {"method": "cc"})] == ["new", "old"]
    trainer.train(tiny_config("c3", tmp_path / "c3", epochs=1))
    assert f"latest finished cc run {tmp_path / 'new'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "c3" / "results.json").read_text())["metrics"]["init_checkpoint"] == str(
        tmp_path / "new" / "last.pt")


def test_without_a_cc_run_nothing_trains_and_the_command_is_printed(tmp_path):
    cfg = tiny_config("c3", tmp_path / "c3", epochs=1, seed=3, feature_dim=64)
    with pytest.raises(ParentRunMissing) as err:
        trainer.train(cfg)
    command = parent_command(cfg, "cc", tmp_path / "cc-digits-smallcnn")
    assert command in str(err.value)
    assert command == (f"python -m train --method cc --dataset digits --preset fast --seed 3 --feature-dim 64 "
                       f"--run-dir {tmp_path / 'cc-digits-smallcnn'}")
    assert not (tmp_path / "c3").exists()


def test_the_cli_exits_2_with_the_command_in_seconds(tmp_path):
    import subprocess
    import sys
    import time

    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "train", "--method", "c3", "--dataset", "digits",
                          "--run-dir", str(tmp_path / "c3")], capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - began
    assert out.returncode == 2, out.stderr
    assert f"python -m train --method cc --dataset digits --run-dir {tmp_path / 'cc-digits-smallcnn'}" in out.stderr
    assert not (tmp_path / "c3").exists() and not (tmp_path / "cc-digits-smallcnn").exists()
    print(f"c3 without a cc run: exit 2 after {took:.1f} s")


def test_train_parent_trains_cc_first_with_its_own_preset(tiny_run, tmp_path, monkeypatch):
    trained = []
    real_train = trainer.train

    def fake_cc_train(cfg):  # stands in for the long CC run: copies the tiny one
        if cfg.method != "cc":
            return real_train(cfg)
        trained.append(cfg)
        shutil.copytree(tiny_run("cc"), cfg.run_dir)

    monkeypatch.setattr(trainer, "train", fake_cc_train)
    real_train(tiny_config("c3", tmp_path / "c3", epochs=1, seed=3, train_parent=True))
    (cc_cfg,) = trained
    assert (cc_cfg.method, cc_cfg.dataset, cc_cfg.preset, cc_cfg.seed) == ("cc", "digits", "fast", 3)
    assert cc_cfg.run_dir == str(tmp_path / "cc-digits-smallcnn")
    cc_fast = make_config("cc", dataset="digits", preset="fast")
    assert (cc_cfg.instance_temperature, cc_cfg.epochs, cc_cfg.lr) == (0.5, cc_fast.epochs, cc_fast.lr)  # CC's preset
