"""One training step of the project against one step of the official code, per method.

The fixtures (tests/train/fixtures/official_step/, made by scripts/official_step_fixtures.py from
checkouts of the official repositories; their README lists the official lines each case runs) hold
fixed input views, the official initial weights, the gradients the official optimiser stepped with,
and every parameter and BatchNorm buffer after the step. Here the project's model gets the same
initial weights (OFFICIAL_TO_PROJECT maps the names), runs the trainer's own step on the same views
(train/trainer.py `train_step` on a `train_state` of the model: forward and gather, the loss, backward,
`build_optimizer`'s optimiser, the schedule, `on_step_end`; `project_step`) with the official run's random
draws (ProPos's noise and shuffles, handed over through the step context: `RecordedDraws`), and every
gradient, parameter and buffer must agree within 1e-5, relative to the largest value of its tensor (fp32,
CPU). Augmentation is outside this test (tests/train/test_augment.py).

The official backbones are swapped for the project's SmallCNN at width 8 in both (the fixtures would
weigh tens of MB with ResNets); everything else is the official code's, at the `paper` presets'
hyper-parameters (test_the_fixture_runs_the_paper_preset).
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import train.backbones
from train.config import Config
from train.distributed import ProcessGroup
from train.methods import build_training_model, make_config
from train.methods.base import ClusteringMethod, EpochContext, StepContext
from train.trainer import lr_factor, train_state, train_step

FIXTURES = Path(__file__).parent / "fixtures" / "official_step"
RTOL = 1e-5
CASES = ("cc", "c3", "cohiclust_simclr", "cohiclust_tree", "cohiclust_pruned", "propos_psl", "propos_bn4",
         "propos_v2")

OFFICIAL_TO_PROJECT: dict[str, tuple[tuple[str, str], ...]] = {
    # CC and C3: modules/network.py Network(resnet, instance_projector, cluster_projector); the project's
    # cluster head is Sequential(mlp, Softmax), so the official cluster_projector.0/.2 are its 0.0/0.2
    "cc": (("resnet.", "backbone.trunk."), ("instance_projector.", "instance_head."),
           ("cluster_projector.", "cluster_head.0.")),
    "c3": (("resnet.", "backbone.trunk."), ("instance_projector.", "instance_head."),
           ("cluster_projector.", "cluster_head.0.")),
    # model.py Model: f (backbone), g (projection head), tree_model (Linear + Sigmoid)
    "cohiclust": (("f.", "backbone.trunk."), ("g.", "projection_head."), ("tree_model.", "tree_head.")),
    # byol_wrapper.py BYOLWrapper: *_q the online network, *_k the target (the project's `backbone` and
    # `projector`, what inference runs); its `encoder` = Sequential(encoder_k, projector_k) is an alias
    "propos": (("encoder_q.", "online_backbone.trunk."), ("projector_q.", "online_projector."),
               ("encoder_k.", "backbone.trunk."), ("projector_k.", "projector."), ("predictor.", "predictor.")),
}
"""Official state_dict name prefix -> the project's, per method."""
PROJECT_ONLY = ("backbone.standardize.", "online_backbone.standardize.", "centroids", "leaf_mask")
"""Project entries the official models do not have: the input standardisation (the official code normalises in
its transforms: the fixture's constants), ProPos's k-means centroids, CoHiClust's leaf mask (the official
masks_for_level, outside its state_dict: the fixture's leaf_mask arrays)."""
GRADIENT_IS_ROUNDING = {"propos": ("projector_q.0.bias", "predictor.0.bias")}
"""Biases of a Linear followed by BatchNorm in training mode: their gradient is 0 but for float rounding
(about 1e-7 of the largest gradient), in the official code as here, so the gradients are not compared and
the weights after the step within RTOL of 1 (the predictor's starts at 0: it moves by rounding only)."""


@dataclass
class Fixture:
    name: str
    x1: torch.Tensor
    x2: torch.Tensor
    before: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    meta: dict[str, Any]
    extra: dict[str, torch.Tensor]

    @property
    def method(self) -> str:
        return self.name.split("_")[0]


@functools.cache
def load_fixture(name: str) -> Fixture:
    with np.load(FIXTURES / f"{name}.npz") as f:
        arrays = {k: torch.from_numpy(f[k]) for k in f.files if k != "meta"}
        meta = json.loads(str(f["meta"]))

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    extra = {k: v for k, v in arrays.items() if "/" not in k and k not in ("x1", "x2")}
    return Fixture(name, arrays["x1"], arrays["x2"], part("before/"), part("grad/"), part("after/"), meta, extra)


def project_name(method: str, official: str) -> str:
    for theirs, ours in OFFICIAL_TO_PROJECT[method]:
        if official.startswith(theirs):
            return ours + official[len(theirs):]
    raise KeyError(f"{method}: no project name for the official {official!r}")


def fixture_config(fx: Fixture) -> Config:
    """The project's `paper` preset for the fixture's data set at its sizes (backbone, widths, batch, clusters)."""
    return make_config(fx.method, dataset=fx.meta["dataset"], preset="paper", **fx.meta["shape"])


def build_project_model(fx: Fixture, monkeypatch: pytest.MonkeyPatch) -> tuple[ClusteringMethod, Config]:
    """The project's model of the fixture's method as the trainer builds it, holding the official initial weights."""
    cfg = fixture_config(fx)
    monkeypatch.setattr(train.backbones, "SmallCNN",
                        functools.partial(train.backbones.SmallCNN, width=fx.meta["smallcnn_width"]))
    mean, std = (cfg.normalization_constants() if cfg.normalize else None) or (None, None)
    model = build_training_model(cfg, 3, fx.meta["shape"]["num_clusters"], mean, std)
    weights = {project_name(fx.method, k): v for k, v in fx.before.items()}
    if "leaf_mask_before" in fx.extra:
        weights["leaf_mask"] = fx.extra["leaf_mask_before"]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, f"official weights with no project counterpart: {unexpected}"
    return model, cfg


@dataclass
class RecordedDraws(StepContext):
    """A step context whose random draws are the official run's (ProPos): `normal` serves the recorded noise
    rows in the order drawn, `permutation` the recorded shuffles of the target's batch."""

    noise: torch.Tensor | None = None
    permutations: list[torch.Tensor] = field(default_factory=list)

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        assert self.noise is not None and self.noise.shape[0] >= like.shape[0], "more noise drawn than recorded"
        rows, self.noise = self.noise[:like.shape[0]], self.noise[like.shape[0]:]
        assert rows.shape == like.shape, (rows.shape, like.shape)
        return rows.to(like)

    def permutation(self, n: int, device: torch.device) -> torch.Tensor:
        assert self.permutations, "more shuffles drawn than recorded"
        drawn = self.permutations.pop(0)
        assert drawn.numel() == n, (drawn.numel(), n)
        return drawn.to(device)


def step_context(fx: Fixture, cfg: Config) -> RecordedDraws:
    """The fixture's step: its epoch and step counters, its batch, and (ProPos) the official draws: the noise of
    direction 1 -> 2, then 2 -> 1 (v2: one draw for [view 1; view 2], the same rows), the shuffles in order."""
    info = fx.meta["step"]
    per_epoch = info.get("steps_per_epoch", 1)
    shuffles = [fx.extra[k] for k in ("shuffle_12", "shuffle_21", "shuffle_keys") if k in fx.extra]
    noise = torch.cat([fx.extra["noise_12"], fx.extra["noise_21"]]) if "noise_12" in fx.extra else None
    return RecordedDraws(info["epoch"], info.get("epochs", cfg.epochs), info["epoch"] * per_epoch, per_epoch,
                         torch.Generator().manual_seed(0), torch.arange(fx.x1.shape[0]), noise=noise,
                         permutations=shuffles)


def project_step(model: ClusteringMethod, cfg: Config, fx: Fixture) -> dict[str, torch.Tensor]:
    """The trainer's step (train/trainer.py `train_step`) on the fixture's views, the schedule at the fixture's
    step; returns the gradients the optimiser stepped with, by parameter name. CoHiClust's epoch hooks run around
    it (they reset and use the pruning statistic)."""
    ctx = step_context(fx, cfg)
    state = train_state(cfg, model, ProcessGroup(), contextlib.nullcontext, ctx.steps_per_epoch)
    for group in state.optimizer.param_groups:  # the schedule at this step (the trainer's LambdaLR)
        group["lr"] = group["initial_lr"] * lr_factor(cfg, ctx.step, ctx.steps_per_epoch)
    epoch_ctx = EpochContext(ctx.epoch, ctx.epochs, torch.zeros(0, 3, 16, 16, dtype=torch.uint8), ctx.generator,
                             map_images=None, run_dir=Path("."))
    if fx.method == "cohiclust":
        model.on_epoch_start(epoch_ctx)
    model.train()
    train_step(state, fx.x1, fx.x2, ctx)
    if fx.method == "propos":
        assert ctx.noise is None or ctx.noise.shape[0] == 0, "recorded noise left undrawn"
        assert not ctx.permutations, "recorded shuffles left undrawn"
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    if fx.method == "cohiclust":
        model.on_epoch_end(epoch_ctx)
    return grads


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, floor: float = 0.0) -> None:
    """Within RTOL of the largest |value| of the expected tensor, or of `floor` if larger (exact for integer
    buffers)."""
    if not expected.is_floating_point():
        assert torch.equal(actual.to(expected.dtype), expected), what
        return
    scale = max(float(expected.abs().max()), floor)
    torch.testing.assert_close(actual.float(), expected, rtol=RTOL, atol=RTOL * scale,
                               msg=lambda m: f"{what}: {m}")


# --- the weights load -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_every_official_weight_has_a_project_counterpart_of_its_shape(name, monkeypatch):
    fx = load_fixture(name)
    model, _ = build_project_model(fx, monkeypatch)
    ours = model.state_dict()
    for official, value in fx.before.items():
        assert tuple(ours[project_name(fx.method, official)].shape) == tuple(value.shape), official
        assert torch.equal(ours[project_name(fx.method, official)], value.to(ours[project_name(fx.method, official)]))


@pytest.mark.parametrize("name", CASES)
def test_every_project_weight_has_an_official_counterpart(name, monkeypatch):
    fx = load_fixture(name)
    model, _ = build_project_model(fx, monkeypatch)
    mapped = {project_name(fx.method, k) for k in fx.before}
    own = [k for k in model.state_dict() if k not in mapped and not k.startswith(PROJECT_ONLY)]
    assert not own, f"project weights the official model does not have: {own}"


@pytest.mark.parametrize("name", CASES)
def test_the_fixture_runs_the_paper_preset(name):
    """The hyper-parameters the official step ran with are the project's `paper` preset for its data set."""
    fx = load_fixture(name)
    cfg = fixture_config(fx)
    for key, value in fx.meta["config"].items():
        ours = getattr(cfg, key)
        if key.startswith("normalize_"):
            ours, value = [float(v) for v in ours.split(",")], [float(v) for v in value.split(",")]
        assert ours == pytest.approx(value, rel=1e-12) if isinstance(value, float) else ours == value, key


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("propos")])
def test_the_learning_rates_at_the_step_are_the_official_ones(name):
    """ProPos's step is the first of epoch 51: the project's schedule gives the official cosine's lrs there."""
    fx = load_fixture(name)
    cfg, official = fixture_config(fx), fx.meta["official"]
    per_epoch = fx.meta["step"]["steps_per_epoch"]
    factor = lr_factor(cfg, fx.meta["step"]["epoch"] * per_epoch, per_epoch)
    assert cfg.lr * factor == pytest.approx(official["lr_at_step"], rel=1e-6)
    assert cfg.lr * cfg.predictor_lr_scale * factor == pytest.approx(official["predictor_lr_at_step"], rel=1e-6)


# --- the step -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_one_step_matches_the_official_step(name, monkeypatch):
    fx = load_fixture(name)
    model, cfg = build_project_model(fx, monkeypatch)
    if fx.method == "propos":
        model.pseudo_labels = fx.extra["pseudo_labels"]
    grads = project_step(model, cfg, fx)
    skip = GRADIENT_IS_ROUNDING.get(fx.method, ())
    for official, expected in fx.grads.items():
        if official not in skip:
            ours = project_name(fx.method, official)
            assert ours in grads, f"{official} ({ours}): the official step has a gradient, the project's none"
            assert_close(grads[ours], expected, f"gradient of {official} ({ours})")
    ours = model.state_dict()
    for official, expected in fx.after.items():
        assert_close(ours[project_name(fx.method, official)], expected, f"{official} after the step",
                     floor=1.0 if official in skip else 0.0)
    if "leaf_mask_after" in fx.extra:
        assert torch.equal(model.leaf_mask, fx.extra["leaf_mask_after"]), "the leaves pruned at the epoch's end"
