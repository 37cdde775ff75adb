"""Small composable heads on top of backbone features (B, in_dim)."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False, first_bias: bool = True) -> nn.Sequential:
    """Linear -> [BN] -> ReLU -> Linear: (B, in_dim) -> (B, out_dim); first_bias: whether the first Linear has one."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=first_bias)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
    return nn.Sequential(*layers)


def cluster_head(in_dim: int, hidden_dim: int, num_clusters: int) -> nn.Sequential:
    """CC's cluster projector: (B, in_dim) -> (B, num_clusters) probabilities (softmax included)."""
    return nn.Sequential(mlp(in_dim, hidden_dim, num_clusters), nn.Softmax(dim=1))
