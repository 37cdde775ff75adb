"""ProPos losses (Huang et al., "Learning Representation for Clustering via Prototype Scattering and
Positive Sampling", TPAMI 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psa_loss(p: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Positive sampling alignment: mean over rows of 2 - 2 cos(p_i, k_i) (BYOL's regression loss).

    p: (N, D) predictor outputs of the (noised) online projections, q + sigma * noise;
    k: (N, D) target projections of the other view (no gradient flows into them).
    For the symmetric loss stack both directions: p = [pred(q1'); pred(q2')], k = [k2; k1].
    """
    if p.shape != k.shape or p.dim() != 2:
        raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(p.shape)} and {tuple(k.shape)}")
    return (2 - 2 * F.cosine_similarity(p.float(), k.detach().float(), dim=1)).mean()


def prototypes(z: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """L2-normalised mean of the L2-normalised rows of z per cluster: (N, D), (N,) -> (num_clusters, D).

    A cluster with no row in the batch gets a zero prototype.
    """
    z = F.normalize(z.float(), dim=1)
    sums = torch.zeros(num_clusters, z.shape[1], dtype=z.dtype, device=z.device).index_add(0, labels, z)
    return F.normalize(sums, dim=1)


ABSENT_LOGIT = -10.0
"""The logit the official code gives a cluster absent from the batch (byol_wrapper.py compute_cluster_loss)."""


def psl_loss(q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, num_clusters: int,
             temperature: float = 0.5, absent_logit: float = ABSENT_LOGIT,
             present: torch.Tensor | None = None) -> torch.Tensor:
    """Prototype scattering loss of one direction, as the official code (byol_wrapper.py compute_cluster_loss).

    q: (N, D) online projections of one view, k: (N, D) target projections of the other view (no
    gradient flows into them), labels: (N,) int64 pseudo-labels in [0, num_clusters). Prototypes: per
    cluster, the normalised mean of the normalised q (online) and of the normalised k (target). For
    each cluster j present in the batch: a cross entropy over all num_clusters logits, the positive
    online_j . target_j / temperature, the negatives online_j . online_i / temperature for the other
    present clusters i, and `absent_logit` (after the temperature) for each absent cluster, which so
    stays in the softmax with a small weight. Returns the mean over the present clusters. ProPos
    averages the two directions: 0.5 * (PSL(q1, k2) + PSL(q2, k1)). present: (num_clusters,) bool, the
    clusters counted as present (default: those in labels; `psl_loss_per_group` passes one group's).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be positive, got {num_clusters}")
    if q.shape != k.shape or q.dim() != 2 or labels.shape != q.shape[:1]:
        raise ValueError(f"expected q, k (N, D) and labels (N,), got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(labels.shape)}")
    if present is None:
        present = torch.bincount(labels, minlength=num_clusters) > 0      # (K,)
    online = prototypes(q, labels, num_clusters)                           # (K, D), zero rows when absent
    target = prototypes(k.detach(), labels, num_clusters)
    logits = online @ online.T / temperature
    positive = (online * target).sum(1) / temperature
    eye = torch.eye(num_clusters, dtype=torch.bool, device=q.device)
    logits = torch.where(eye, positive[:, None].expand_as(logits), logits)  # diagonal := positive logit
    logits = logits.masked_fill(~present[None, :], absent_logit)          # absent clusters' columns
    per_cluster = F.cross_entropy(logits, torch.arange(num_clusters, device=q.device), reduction="none")
    return per_cluster[present].mean()


def psl_loss_per_group(q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, num_clusters: int,
                       temperature: float = 0.5, groups: int = 1) -> torch.Tensor:
    """PSL of one direction as the official code computes it on `groups` devices, on one device.

    q, k: (N, D), labels: (N,), the global batch, rows of device g in slice g of `groups` equal slices.
    Officially (byol_wrapper.py forward_loss, utils/gather_layer.py) every device g computes PSL on the
    prototypes of the whole gathered batch, with the clusters absent from ITS OWN labels as absent
    (compute_cluster_loss gets the device's labels), and GatherLayer hands its backward only device g's
    rows of q; DistributedDataParallel then averages over the devices. So: the mean over groups of PSL_g, each
    with only slice g of q attached. When every group holds every cluster the value is the plain PSL and the
    gradient 1 / groups of it: the official 4-device recipe's effective PSL weight is psl_weight / 4.
    groups 1: `psl_loss`.
    """
    if groups == 1:
        return psl_loss(q, k, labels, num_clusters, temperature)
    if q.shape[0] % groups:
        raise ValueError(f"PSL over {groups} groups: {q.shape[0]} rows do not split into equal slices")
    group_of_row = torch.arange(q.shape[0], device=q.device) // (q.shape[0] // groups)
    losses = []
    for g in range(groups):
        own = (group_of_row == g)[:, None]
        present = torch.bincount(labels[group_of_row == g], minlength=num_clusters) > 0
        losses.append(psl_loss(torch.where(own, q, q.detach()), k, labels, num_clusters, temperature,
                               present=present))
    return torch.stack(losses).mean()
