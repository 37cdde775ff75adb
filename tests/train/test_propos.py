"""ProPos: PSA and PSL against slow references, the EMA update by hand, a training step, the saved model."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.support.runs import tiny_config
from train.checkpoint import load_run, read_checkpoint
from train.data.datasets import load_dataset
from train.ema import ema_update, momentum_at
from train.kmeans import assign, centroids_of
from train.losses.propos import psa_loss, psl_loss
from train.methods.base import StepContext
from train.methods.propos import ProPos
from train.trainer import step_losses


def slow_psa(p: torch.Tensor, k: torch.Tensor) -> float:
    total = 0.0
    for pi, ki in zip(p.tolist(), k.tolist(), strict=True):
        dot = sum(a * b for a, b in zip(pi, ki, strict=True))
        total += 2 - 2 * dot / (math.sqrt(sum(a * a for a in pi)) * math.sqrt(sum(b * b for b in ki)))
    return total / len(p)


def slow_psl(q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, num_clusters: int, t: float,
             absent_logit: float | None = None) -> float:
    """The paper's PSL by loops; absent_logit=-10 reproduces the reference code's masking."""
    def proto(z, c):
        rows = [F.normalize(z[i], dim=0) for i in range(len(z)) if labels[i] == c]
        return F.normalize(sum(rows), dim=0) if rows else None

    online = [proto(q, c) for c in range(num_clusters)]
    target = [proto(k, c) for c in range(num_clusters)]
    present = [c for c in range(num_clusters) if online[c] is not None]
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


def test_psl_matches_slow_reference_with_absent_clusters():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 3, 3, 4, 4, 4, 4, 0])   # clusters 2 and 5 absent
    for t in (0.1, 0.5, 1.0):
        expected = slow_psl(q, k, labels, 6, t)
        assert psl_loss(q, k, labels, 6, t).item() == pytest.approx(expected, rel=1e-5)
    # the reference code's -10 logits for absent columns differ only by terms of order exp(-10)
    assert psl_loss(q, k, labels, 6, 0.5).item() == pytest.approx(slow_psl(q, k, labels, 6, 0.5, -10.0), abs=1e-3)


def test_psl_edge_cases_and_gradients():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    one_cluster = torch.zeros(4, dtype=torch.long)
    assert psl_loss(q, k, one_cluster, 3).item() == pytest.approx(0.0, abs=1e-6)   # no negatives
    psl_loss(q, k, torch.tensor([0, 1, 2, 1]), 3).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None   # the target side gets no gradient
    with pytest.raises(ValueError):
        psl_loss(q, k, one_cluster, 3, temperature=0.0)
    with pytest.raises(ValueError):
        psl_loss(q, k, one_cluster[:3], 3)


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
    step = StepContext(epoch=1, epochs=2, step=3, steps_per_epoch=4, generator=g, indices=torch.arange(8) * 3)
    losses = step_losses(model, model, x1, x2, step)
    assert losses["psl"].item() > 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.predictor[0].weight.grad is not None
    before = [p.clone() for p in model.backbone.parameters()]
    with torch.no_grad():
        for p in model.online_backbone.parameters():
            p.add_(1.0)
    model.on_step_end(step)
    m = cfg.ema_momentum
    for b, t, o in zip(before, model.backbone.parameters(), model.online_backbone.parameters(), strict=True):
        torch.testing.assert_close(t, m * b + (1 - m) * o)


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
