"""DRC: its losses against a slow reference and hand-computed cases; a couple of training steps on CPU."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.support.runs import tiny_config
from train.checkpoint import load_run
from train.losses.drc import cluster_regularization
from train.methods.base import StepContext
from train.methods.drc import DRC
from train.trainer import step_outputs


def test_cluster_regularization_hand_computed():
    # Masses 3 and 1 over N = 4: (9 + 1) / 4.
    one_hot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert cluster_regularization(one_hot).item() == pytest.approx(2.5)
    # Balanced: N / K; everything in one cluster: N.
    assert cluster_regularization(torch.full((6, 3), 1 / 3)).item() == pytest.approx(2.0)
    assert cluster_regularization(torch.tensor([[0.0, 1.0]] * 5)).item() == pytest.approx(5.0)
    soft = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.7, 0.2]])
    assert cluster_regularization(soft).item() == pytest.approx((0.6**2 + 0.95**2 + 0.45**2) / 2)
    with pytest.raises(ValueError):
        cluster_regularization(torch.ones(4))


def slow_drc_loss(a1: torch.Tensor, a2: torch.Tensor, t_af: float, t_ap: float, lam: float) -> float:
    def nt_xent_rows(rows1, rows2, t):
        z = [F.normalize(r, dim=0) for r in rows1 + rows2]
        n, total = len(rows1), 0.0
        for i in range(2 * n):
            denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
            total += -math.log(math.exp(float(z[i] @ z[(i + n) % (2 * n)]) / t) / denom)
        return total / (2 * n)

    p1, p2 = a1.softmax(1), a2.softmax(1)
    n, k = p1.shape
    cr = sum(sum(float(p[i, j]) for i in range(n)) ** 2 for p in (p1, p2) for j in range(k)) / n / 2
    af = nt_xent_rows(list(a1), list(a2), t_af)
    ap = nt_xent_rows(list(p1.T), list(p2.T), t_ap)
    return af + ap + lam * cr


def test_drc_loss_matches_slow_reference(tmp_path):
    torch.manual_seed(0)
    model = DRC(tiny_config("drc", tmp_path, balance_weight=0.3), in_channels=1, num_clusters=4)
    x1, x2 = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    step = StepContext(0, 1, 0, 1, torch.Generator(), torch.arange(6))
    losses = model.loss(step_outputs(model, x1, x2, step), step)
    with torch.no_grad():
        a1, a2 = model.assignment_head(model.backbone(x1)), model.assignment_head(model.backbone(x2))  # per view
    assert losses["loss"].item() == pytest.approx(slow_drc_loss(a1, a2, 0.5, 1.0, 0.3), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((losses["af"] + losses["ap"] + 0.3 * losses["cr"]).item())


def test_drc_trains_a_couple_of_steps_and_predicts(tiny_run):
    run = load_run(tiny_run("drc"))
    assert run.epoch == 2
    x = torch.rand(5, 1, 16, 16)
    out = run.model.predict(x)
    assert out["embedding"].shape == (5, 10) and out["probabilities"].shape == (5, 10)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(5))
    assert torch.allclose(out["probabilities"].sum(1), torch.ones(5))
    assert torch.equal(out["cluster"], out["probabilities"].argmax(1))
    with torch.no_grad():
        logits = run.model.assignment_head(run.model.backbone(x))
    assert torch.allclose(out["embedding"], F.normalize(logits, dim=1))  # the exported embedding: normalised AF
