"""ProPos: PSA and PSL against slow references written from the official code (per direction, absent clusters
at logit -10), the predictor's initialisation, the EMA update by hand, a training step, class-balanced
resampling after k-means, the saved model."""

import contextlib
import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train.trainer as trainer
from tests.support.runs import tiny_config
from train.checkpoint import load_run, read_checkpoint
from train.data.datasets import load_dataset
from train.ema import ema_update, momentum_at
from train.kmeans import assign, centroids_of
from train.losses.propos import psa_loss, psl_loss, psl_loss_per_group
from train.methods.base import EpochContext, StepContext
from train.methods.propos import ProPos, deinterleave, interleave
from train.trainer import epoch_order, map_batches, step_outputs


def slow_psa(p: torch.Tensor, k: torch.Tensor) -> float:
    total = 0.0
    for pi, ki in zip(p.tolist(), k.tolist(), strict=True):
        dot = sum(a * b for a, b in zip(pi, ki, strict=True))
        total += 2 - 2 * dot / (math.sqrt(sum(a * a for a in pi)) * math.sqrt(sum(b * b for b in ki)))
    return total / len(p)


def slow_psl(q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, num_clusters: int, t: float,
             absent_logit: float | None = -10.0, own_labels: torch.Tensor | None = None) -> float:
    """PSL of one direction by loops, from the official byol_wrapper.py compute_cluster_loss: per present
    cluster a cross entropy whose negatives are the other present prototypes and, at logit -10 (after
    the temperature), every absent cluster; the mean over the present clusters. absent_logit=None drops
    the absent clusters instead. own_labels: one device's labels, which decide what is absent there (the
    prototypes are the whole batch's)."""
    def proto(z, c):
        rows = [F.normalize(z[i], dim=0) for i in range(len(z)) if labels[i] == c]
        return F.normalize(sum(rows), dim=0) if rows else None

    online = [proto(q, c) for c in range(num_clusters)]
    target = [proto(k, c) for c in range(num_clusters)]
    present = [c for c in range(num_clusters) if online[c] is not None
               and (own_labels is None or c in own_labels.tolist())]
    total = 0.0
    for j in present:
        pos = float(online[j] @ target[j]) / t
        negs = []
        for i in range(num_clusters):
            if i == j:
                continue
            if i in present:
                negs.append(float(online[j] @ online[i]) / t)
            elif absent_logit is not None:
                negs.append(absent_logit)
        total += -pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs))
    return total / len(present)


def test_psa_matches_slow_reference_and_analytic_values():
    g = torch.Generator().manual_seed(0)
    p, k = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert psa_loss(p, k).item() == pytest.approx(slow_psa(p, k), rel=1e-5)
    assert psa_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)   # aligned: 0
    assert psa_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)      # opposite: 4
    with pytest.raises(ValueError):
        psa_loss(p, k[:3])


def test_psl_matches_the_official_reference_with_absent_clusters():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 3, 3, 4, 4, 4, 4, 0])   # clusters 2 and 5 absent
    for t in (0.1, 0.5, 1.0):
        assert psl_loss(q, k, labels, 6, t).item() == pytest.approx(slow_psl(q, k, labels, 6, t), rel=1e-5)


def test_psl_with_several_clusters_absent_keeps_them_at_logit_minus_10():
    # 20 clusters, 3 in the batch: 17 absent columns at -10 in every row's softmax.
    g = torch.Generator().manual_seed(11)
    q, k = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    labels = torch.tensor([3, 3, 7, 7, 7, 12, 12, 3, 12])
    got = psl_loss(q, k, labels, 20, 1.0).item()
    assert got == pytest.approx(slow_psl(q, k, labels, 20, 1.0), rel=1e-6)
    dropped = slow_psl(q, k, labels, 20, 1.0, absent_logit=None)
    assert got - dropped > 1e-5   # the absent clusters add weight to every denominator
    # one cluster present: no prototype negatives, but the absent ones keep the loss above zero
    one = torch.zeros(9, dtype=torch.long)
    expected = slow_psl(q, k, one, 20, 1.0)
    assert psl_loss(q, k, one, 20, 1.0).item() == pytest.approx(expected, abs=1e-6) and expected > 1e-4
    assert psl_loss(q, k, one, 1, 1.0).item() == pytest.approx(0.0, abs=1e-6)   # nothing to contrast


def test_psl_edge_cases_and_gradients():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    psl_loss(q, k, torch.tensor([0, 1, 2, 1]), 3).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None   # the target side gets no gradient
    one_cluster = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError):
        psl_loss(q, k, one_cluster, 3, temperature=0.0)
    with pytest.raises(ValueError):
        psl_loss(q, k, one_cluster[:3], 3)


def test_psl_per_group_is_the_official_multi_device_loss_and_gradient():
    """On N devices each computes PSL on the whole batch's prototypes with the clusters absent from its own labels,
    GatherLayer returns it only its own rows' gradient, DDP averages: the mean of the per-device losses, and
    1/N of the single-device gradient when every device holds every cluster."""
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0, 0, 1, 2, 3, 3, 2, 1, 0])  # device 1 lacks 3, device 0 has all
    devices, rows = 4, 4
    value = psl_loss_per_group(q.requires_grad_(True), k, labels, 5, 0.5, devices)
    value.backward()
    own = [labels[r * rows:(r + 1) * rows] for r in range(devices)]
    expected = sum(slow_psl(q.detach(), k, labels, 5, 0.5, own_labels=o) for o in own) / devices
    assert value.item() == pytest.approx(expected, rel=1e-5)
    grad = torch.zeros_like(q)
    for r in range(devices):  # device r's loss, its gradient to its own rows only, DDP's mean
        q_r = q.detach().clone().requires_grad_(True)
        present = torch.bincount(own[r], minlength=5) > 0
        psl_loss(q_r, k, labels, 5, 0.5, present=present).backward()
        grad[r * rows:(r + 1) * rows] = q_r.grad[r * rows:(r + 1) * rows] / devices
    torch.testing.assert_close(q.grad, grad)
    # every device holding every cluster: the plain PSL, at a quarter of its gradient
    balanced = torch.tensor([0, 1, 2, 3] * 4)
    q.grad = None
    psl_loss_per_group(q, k, balanced, 4, 0.5, devices).backward()
    per_group = q.grad.clone()
    q.grad = None
    psl_loss(q, k, balanced, 4, 0.5).backward()
    torch.testing.assert_close(per_group, q.grad / devices)
    with pytest.raises(ValueError, match="do not split"):
        psl_loss_per_group(q[:15], k[:15], balanced[:15], 4, 0.5, devices)


def test_the_v2_batch_holds_both_views_of_each_group():
    a, b = torch.arange(8.0), -torch.arange(8.0)
    both = interleave(a, b, 2)
    assert both.tolist() == [0, 1, 2, 3, 0, -1, -2, -3, 4, 5, 6, 7, -4, -5, -6, -7]  # group g: [a_g; b_g]
    assert [t.tolist() for t in deinterleave(both, 2)] == [a.tolist(), b.tolist()]
    torch.testing.assert_close(interleave(a, b, 1), torch.cat([a, b]))


def test_the_method_averages_the_two_directions_and_inits_its_predictor(tmp_path):
    cfg = tiny_config("propos", tmp_path, psl_warmup_epochs=0)
    model = ProPos(cfg, in_channels=1, num_clusters=4)
    for layer in (model.predictor[0], model.predictor[3]):   # official: every Linear N(0, 0.01), bias 0
        assert abs(layer.weight.std().item() - 0.01) < 0.001 and not layer.bias.any()
    g = torch.Generator().manual_seed(2)
    d = cfg.feature_dim
    outputs = {name: torch.randn(8, d, generator=g) for name in ("p1", "p2", "t1", "t2", "q1", "q2")}
    outputs["labels"] = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])   # cluster 3 absent
    step = StepContext(epoch=0, epochs=2, step=0, steps_per_epoch=1, generator=g, indices=torch.arange(8))
    t = cfg.psl_temperature
    expected = 0.5 * (slow_psl(outputs["q1"], outputs["t2"], outputs["labels"], 4, t)
                      + slow_psl(outputs["q2"], outputs["t1"], outputs["labels"], 4, t))
    got = model.loss(outputs, step)
    assert got["psl"].item() == pytest.approx(expected, rel=1e-5)
    pooled = slow_psl(torch.cat([outputs["q1"], outputs["q2"]]), torch.cat([outputs["t2"], outputs["t1"]]),
                      outputs["labels"].repeat(2), 4, t)
    assert got["psl"].item() != pytest.approx(pooled, rel=1e-3)   # one PSL over both views is not the official


def test_ema_update_by_hand():
    target, online = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.bias.fill_(0.5)
        online.weight.copy_(torch.tensor([[3.0, -2.0]]))
        online.bias.fill_(1.5)
    ema_update(target, online, 0.9)
    # 0.9 * target + 0.1 * online
    assert target.weight[0].tolist() == pytest.approx([1.2, 1.6])
    assert target.bias.item() == pytest.approx(0.6)
    assert online.weight.tolist() == [[3.0, -2.0]]   # the online network is untouched
    with pytest.raises(ValueError):
        ema_update(target, online, 1.5)
    with pytest.raises(ValueError):
        ema_update(target, nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 1)), 0.9)


def test_momentum_schedule():
    assert momentum_at(0.996, 500, 1000) == 0.996
    assert momentum_at(0.996, 0, 1000, "cosine") == pytest.approx(0.996)
    assert momentum_at(0.996, 500, 1000, "cosine") == pytest.approx(0.998)
    assert momentum_at(0.996, 1000, 1000, "cosine") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        momentum_at(0.996, 0, 10, "linear")


def test_training_step_with_psl_on_cpu(tmp_path):
    cfg = tiny_config("propos", tmp_path, psl_warmup_epochs=1)
    model = ProPos(cfg, in_channels=1, num_clusters=10)
    target_params = {id(p) for p in [*model.backbone.parameters(), *model.projector.parameters()]}
    groups = model.param_groups()
    assert not target_params & {id(p) for g in groups for p in g["params"]}   # target: EMA only
    assert groups[1]["lr_scale"] == 10.0 and groups[1]["params"] == list(model.predictor.parameters())
    g = torch.Generator().manual_seed(0)
    model.pseudo_labels = torch.randint(10, (100,), generator=g)
    x1, x2 = torch.rand(8, 1, 16, 16, generator=g), torch.rand(8, 1, 16, 16, generator=g)
    assert model.sample_weights() is None   # resampling is off
    step = StepContext(epoch=1, epochs=2, step=3, steps_per_epoch=4, generator=g, indices=torch.arange(8) * 3)
    with torch.no_grad():  # a target apart from the online network, so the EMA shows
        for p in model.backbone.parameters():
            p.add_(1.0)
    target_before = [p.clone() for p in model.backbone.parameters()]
    online_before = [p.clone() for p in model.online_backbone.parameters()]
    outputs = step_outputs(model, x1, x2, step)
    # the official v1 step: the target's EMA update inside the forward, from the online weights of before the step
    m = cfg.ema_momentum
    for b, t, o in zip(target_before, model.backbone.parameters(), online_before, strict=True):
        torch.testing.assert_close(t, m * b + (1 - m) * o)
    losses = model.loss(outputs, step)
    assert losses["psl"].item() > 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.predictor[0].weight.grad is not None


def test_resampling_after_kmeans_draws_the_clusters_evenly(tmp_path):
    cfg = tiny_config("propos", tmp_path, resample=True, kmeans_restarts=1, batch_size=100)
    model = ProPos(cfg, in_channels=1, num_clusters=10).eval()
    images = load_dataset("digits", None, 16).images
    ctx = EpochContext(0, 2, images, torch.Generator().manual_seed(0),
                       lambda fn: map_batches(model, fn, images, 512, contextlib.nullcontext, 16), tmp_path)
    model.on_epoch_start(ctx)   # the first k-means: pseudo-labels and the next epoch's weights
    labels = model.pseudo_labels
    sizes = torch.bincount(labels, minlength=10).float()
    weights = model.sample_weights()
    torch.testing.assert_close(weights, len(labels) / sizes[labels])   # N / |cluster| (basic_template.py)
    draws = epoch_order(images, cfg, torch.Generator().manual_seed(1), weights)
    assert draws.shape == (1700,)   # 17 full batches, drawn with replacement
    drawn = torch.bincount(labels[draws], minlength=10).float() / len(draws)
    plain = sizes / sizes.sum()
    assert (drawn - 0.1).abs().max() < 0.035 < (plain - 0.1).abs().max()   # balanced; k-means' sizes are not
    unweighted = epoch_order(images, cfg, torch.Generator().manual_seed(1), None)
    assert torch.equal(unweighted.sort().values, torch.arange(len(images)))   # a plain permutation


def test_the_trainer_resamples_every_epoch_after_kmeans(tmp_path, monkeypatch):
    seen = []
    real = trainer.epoch_order

    def spy(images, cfg, generator, weights):
        seen.append(weights)
        return real(images, cfg, generator, weights)

    monkeypatch.setattr(trainer, "epoch_order", spy)
    trainer.train(tiny_config("propos", tmp_path, resample=True, epochs=2, kmeans_restarts=1, batch_size=256))
    assert len(seen) == 2 and all(w is not None and w.shape == (1797,) for w in seen)
    assert not torch.equal(seen[0], seen[1])   # the second epoch draws by the k-means after the first


def test_tiny_run_saves_centroids_and_reloads_identically(tiny_run):
    run_dir = tiny_run("propos")
    state = read_checkpoint(run_dir)
    centroids = state["model"]["centroids"]
    assert centroids.shape == (10, state["config"]["feature_dim"])
    assert torch.allclose(centroids.norm(dim=1), torch.ones(10), atol=1e-4)
    loaded = load_run(run_dir).model
    images = load_dataset("digits", None, 16).images.float().div(255)
    out = loaded.predict(images)
    with open(run_dir / "assignments.csv") as f:
        saved = [int(row["cluster"]) for row in csv.DictReader(f)]
    assert out["cluster"].tolist() == saved
    assert torch.allclose(out["probabilities"].sum(1), torch.ones(len(images)), atol=1e-5)
    # the saved centroids are k-means' fixed point on the saved model's own features (not one epoch stale)
    features = out["embedding"]
    torch.testing.assert_close(centroids_of(features, assign(features, centroids)[0], 10), centroids,
                               atol=1e-4, rtol=0)
