"""A first run that fits (issue 25): schedule points follow --epochs, a schedule that cannot work and a batch
larger than the data are one-line errors, and the trainer projects the run's time from its first steps."""

from __future__ import annotations

import contextlib
import json
import re
import shlex

import numpy as np
import pytest

from tests.support.runs import digit_folder, tiny_config
from tests.train.formats import write_cifar10
from train import budget, trainer
from train.__main__ import build_parser, main
from train.budget import CPU_SIZED, command_line, fitting_command
from train.config import check_schedule
from train.methods import make_config


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def test_points_in_epochs_follow_a_shorter_run_unless_given():
    plan = make_config("cohiclust", dataset="cifar10", preset="paper")
    assert (plan.epochs, plan.simclr_epochs, plan.prune_start_epoch) == (1500, 1000, 1051)
    short = make_config("cohiclust", dataset="cifar10", preset="paper", epochs=60)
    assert (short.simclr_epochs, short.prune_start_epoch) == (40, 43)  # 1000 x 60/1500; 1051 x 60/1500 rounded up
    given = make_config("cohiclust", dataset="cifar10", preset="paper", epochs=60, simclr_epochs=10)
    assert (given.simclr_epochs, given.prune_start_epoch) == (10, 43)
    longer = make_config("propos", dataset="cifar10", preset="paper", epochs=2000)
    assert (longer.warmup_epochs, longer.psl_warmup_epochs, longer.cosine_epochs) == (100, 100, 2000)
    same = make_config("propos", dataset="cifar10", preset="paper", epochs=1000)
    assert (same.warmup_epochs, same.cosine_epochs) == (50, 1000)
    # a phase that ends before the run ends still does when scaled down as far as one epoch
    for epochs in range(1, 40):
        cfg = make_config("cohiclust", dataset="cifar10", preset="paper", epochs=epochs)
        assert cfg.simclr_epochs < epochs and cfg.prune_start_epoch > cfg.simclr_epochs
        check_schedule(cfg)


def test_a_loss_that_would_never_start_is_a_one_line_error_naming_the_options(tmp_path, capsys):
    with pytest.raises(ValueError, match="PSL would never start"):
        check_schedule(make_config("propos", dataset="cifar10", preset="paper", epochs=40, psl_warmup_epochs=50))
    code = main(["--method", "cohiclust", "--dataset", "digits", "--epochs", "20", "--simclr-epochs", "20",
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--simclr-epochs 20 with --epochs 20: the tree loss would never start" in err
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_folder_names_batch_size_and_the_images(tmp_path, capsys):
    folder = digit_folder(tmp_path / "photos", per_class=40, classes=3)  # 120 images and one broken file
    code = main(["--method", "cc", "--dataset", "folder", "--data-dir", str(folder), "--epochs", "2",
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err == (f"error: --batch-size 256 is larger than the 120 images of the folder {folder}: "
                   "give --batch-size 32 or smaller")


def tiny_cifar(tmp_path) -> dict:
    """A 96-image CIFAR-10 on disk and the overrides that train the paper preset's schedule on it in seconds."""
    write_cifar10(tmp_path / "data", np.random.default_rng(0), per_file=16)
    return dict(dataset="cifar10", data_dir=str(tmp_path / "data"), preset="paper", backbone="smallcnn",
                stem="cifar", image_size=16, batch_size=32, eval_every=0)


def test_cohiclusts_paper_preset_shortened_to_60_epochs_trains_and_prunes_the_tree(tmp_path, capsys):
    cfg = tiny_config("cohiclust", tmp_path / "run", **tiny_cifar(tmp_path), epochs=60)
    trainer.train(cfg)
    out = capsys.readouterr().out
    assert ("schedule: 60 epochs, the paper preset plans 1500; warmup_epochs 0, cosine_epochs 0, simclr_epochs 40 "
            "(the preset's 1000 scaled), prune_start_epoch 43 (the preset's 1051 scaled)") in out
    epochs = records(tmp_path / "run")
    assert len(epochs) == 60
    tree_part = [r["loss"] - r["simclr"] for r in epochs]
    assert all(abs(t) < 1e-9 for t in tree_part[:40])  # SimCLR only
    assert all(abs(t) > 1e-4 for t in tree_part[40:])  # the tree loss on
    tree = json.loads((tmp_path / "run" / "tree.json").read_text())
    assert len(tree["pruned_leaves"]) == 6 and len(tree["leaves"]) == 10


def test_propos_paper_preset_shortened_to_40_epochs_turns_psl_on(tmp_path, capsys):
    cfg = tiny_config("propos", tmp_path / "run", **tiny_cifar(tmp_path), epochs=40, kmeans_restarts=1,
                      hidden_dim=64, feature_dim=32)
    trainer.train(cfg)
    out = capsys.readouterr().out
    assert "psl_warmup_epochs 2 (the preset's 50 scaled)" in out and "warmup_epochs 2 (the preset's 50 scaled)" in out
    psl = [r["psl"] for r in records(tmp_path / "run")]
    assert psl[:2] == [0.0, 0.0] and all(p > 0 for p in psl[2:])


def test_the_run_projects_its_time_before_its_first_step_and_from_its_first_steps(tmp_path, capsys):
    trainer.train(tiny_config("cc", tmp_path / "run", epochs=3))
    out = capsys.readouterr().out
    estimated, measured = [x for x in out.splitlines() if x.startswith("projected: about")]
    assert "for the 3 epochs left (14 steps each" in estimated and re.search(
        r"estimated from \d+ images through the backbone", estimated)
    assert "for the 3 epochs left (14 steps each" in measured and "measured on its first steps" in measured
    assert "far beyond" not in out


def test_the_time_probe_grows_its_pass_for_a_quick_model_and_not_for_a_slow_one(monkeypatch):
    """A small model's cost per image falls with the batch, so a quick first pass is followed by larger ones up to
    the batch; a pass that takes long enough is scaled to the batch as it is."""
    import time

    import torch

    class Timed(torch.nn.Module):
        def __init__(self, sleep_s: float) -> None:
            super().__init__()
            self.weight, self.sleep_s, self.sizes = torch.nn.Parameter(torch.ones(1)), sleep_s, []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.sizes.append(x.shape[0])
            time.sleep(self.sleep_s)
            return x.flatten(1).sum(1) * self.weight

    monkeypatch.setattr(budget, "PROBE_PASS_SECONDS", 0.05)
    images = torch.zeros(300, 1, 4, 4)
    quick, slow = Timed(0.0), Timed(0.06)
    monkeypatch.setattr(budget.copy, "deepcopy", lambda module: module)  # watch the probe's own copy
    seconds, count = budget.probe_step_seconds(quick, lambda x: x, images, 256, contextlib.nullcontext, lambda: None)
    assert count == 256 and quick.sizes[-1] == 2 * 256
    seconds, count = budget.probe_step_seconds(slow, lambda x: x, images, 256, contextlib.nullcontext, lambda: None)
    assert count == 8 and slow.sizes == [8, 16] and seconds == pytest.approx(0.06 * 256 / 8, rel=0.5)
    _, count = budget.probe_step_seconds(slow, lambda x: x, images, 96, contextlib.nullcontext, lambda: None, 3)
    assert count == 6  # a multiple of the BatchNorm groups


def test_the_estimate_leaves_the_training_as_it_would_have_been(tmp_path, monkeypatch):
    """The probe works on a copy of the backbone and its own random stream: the run's weights are those of a run
    without it."""
    import torch

    from train.checkpoint import read_checkpoint

    trainer.train(tiny_config("propos", tmp_path / "probed", epochs=1, kmeans_restarts=1))
    monkeypatch.setattr(trainer, "project_time", lambda run, state: None)
    trainer.train(tiny_config("propos", tmp_path / "plain", epochs=1, kmeans_restarts=1))
    probed, plain = read_checkpoint(tmp_path / "probed")["model"], read_checkpoint(tmp_path / "plain")["model"]
    assert all(torch.equal(probed[k], plain[k]) for k in plain)


def test_far_beyond_a_first_run_on_a_cpu_it_gives_the_command_of_one_that_fits(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(budget, "CPU_BUDGET_S", 0)  # any run is "too long": the advice without a long run
    trainer.train(tiny_config("cc", tmp_path / "run", epochs=2, image_size=8))
    out = capsys.readouterr().out
    advice, = [x for x in out.splitlines() if x.startswith("that is far beyond a first run on a CPU")]  # once
    command = shlex.split(advice.split(": ", 1)[1])
    assert command[:3] == ["python", "-m", "train"] and "this run goes on" in out
    args = vars(build_parser("cc", "digits", "fast").parse_args(command[3:]))
    suggested = make_config(**args)
    assert (suggested.backbone, suggested.image_size) == (CPU_SIZED["backbone"], CPU_SIZED["image_size"])
    assert (suggested.preset, suggested.batch_size, suggested.seed) == ("fast", 128, 0)
    assert suggested.run_dir == f"{tmp_path / 'run'}-cpu" and 1 <= suggested.epochs <= 2
    assert records(tmp_path / "run")[-1]["epoch"] == 2  # and the run asked for went on to its end


def test_the_fitting_command_keeps_the_users_choices_and_sizes_the_epochs_by_flops(tmp_path):
    cfg = make_config("cc", dataset="folder", data_dir="/photos", batch_size=64, num_clusters=8)
    command, seconds = fitting_command(cfg, in_channels=3, epoch_seconds=240.0)  # 4 min an epoch of ResNet-34
    args = shlex.split(command)
    assert args[args.index("--data-dir") + 1] == "/photos" and args[args.index("--batch-size") + 1] == "64"
    assert args[args.index("--num-clusters") + 1] == "8" and "--run-dir" not in args
    epochs = int(args[args.index("--epochs") + 1])
    assert 10 <= epochs < cfg.epochs and seconds <= 600
    # options equal to what the preset gives are left out; a scaled schedule is not spelled out
    plain = command_line(make_config("propos", dataset="cifar10", preset="paper", epochs=40), {})
    assert plain == "python -m train --method propos --dataset cifar10 --epochs 40"
