"""NT-Xent and CC's cluster loss against slow loop-based references and analytic cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses.cc import cluster_contrastive_loss, negative_entropy
from train.losses.contrastive import nt_xent


def slow_nt_xent(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    z = [F.normalize(r, dim=0) for r in torch.cat([a, b])]
    n, total = a.shape[0], 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / denom)
    return torch.tensor(total / (2 * n))


def test_nt_xent_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.1, 0.5, 1.0):
        assert nt_xent(a, b, t).item() == pytest.approx(slow_nt_xent(a, b, t).item(), rel=1e-5)


def test_nt_xent_analytic_orthogonal_identical_views():
    # Identical views, rows mutually orthogonal: positive sim 1, 2N-2 negatives at 0.
    n, t = 4, 0.5
    a = torch.eye(n)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert nt_xent(a, a.clone(), t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_batch_of_one_and_bad_arguments():
    a = torch.randn(1, 3)
    assert nt_xent(a, a, 0.5).item() == pytest.approx(0.0, abs=1e-6)  # the positive is the only other row
    with pytest.raises(ValueError):
        nt_xent(a, a, 0.0)
    with pytest.raises(ValueError):
        nt_xent(torch.randn(2, 3), torch.randn(3, 3), 0.5)


def test_negative_entropy_hand_computed():
    uniform = torch.full((4, 2), 0.5)
    assert negative_entropy(uniform).item() == pytest.approx(0.0, abs=1e-6)
    one_cluster = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert negative_entropy(one_cluster).item() == pytest.approx(math.log(2), abs=1e-6)
    mass_3_1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert negative_entropy(mass_3_1).item() == pytest.approx(math.log(2) - h, abs=1e-6)


def slow_cc_cluster_loss(p1: torch.Tensor, p2: torch.Tensor, t: float) -> float:
    # CC reference code: columns compared by cosine similarity, NT-Xent over 2M, plus both entropies.
    m = p1.shape[1]
    cols = [c for c in torch.cat([p1.T, p2.T])]
    total = 0.0
    for i in range(2 * m):
        pos = (i + m) % (2 * m)
        sims = [float(F.cosine_similarity(cols[i], cols[k], dim=0)) / t for k in range(2 * m)]
        denom = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -math.log(math.exp(sims[pos]) / denom)
    ent = 0.0
    for p in (p1, p2):
        q = p.sum(0) / p.sum()
        ent += math.log(m) + float((q * q.log()).sum())
    return total / (2 * m) + ent


def test_cluster_loss_matches_slow_reference():
    g = torch.Generator().manual_seed(1)
    p1 = torch.softmax(torch.randn(8, 3, generator=g), 1)
    p2 = torch.softmax(torch.randn(8, 3, generator=g), 1)
    assert cluster_contrastive_loss(p1, p2, 1.0).item() == pytest.approx(slow_cc_cluster_loss(p1, p2, 1.0), rel=1e-5)
