"""BatchNorm over groups of the batch ("ghost" BatchNorm): one device training as an official recipe ran on N.

ProPos's official recipes train on 4 GPUs with plain (unsynchronised) BatchNorm: every BatchNorm layer
normalises each device's share of the batch with that share's own mean and variance. `group_batch_norms`
makes one device do the same: every BatchNorm1d/2d of a model, in training mode, normalises `groups`
consecutive equal slices of its batch separately (slice g is what device g would hold). In evaluation
mode nothing changes (the running statistics are used).

Running statistics: those of slice 0 only. That is the official run's: each process updates its own
buffers from its own slice, DistributedDataParallel broadcasts process 0's to the others at every forward
(`broadcast_buffers`), and the checkpoint saves process 0's. So the buffers evaluation and k-means use are
the running average of slice 0's statistics, as here.

The replacement keeps the layer's parameters and buffers (the same tensors, under the same names), so
optimisers, checkpoints and exports see no difference; under DistributedDataParallel each process groups its
own share of the batch (train/trainer.py: bn_groups / processes groups per process).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _GroupedBatchNorm:
    """The forward of a BatchNorm layer over `groups` consecutive equal slices of the batch (training mode)."""

    groups: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)  # type: ignore[misc]
        if x.shape[0] % self.groups:
            raise ValueError(f"BatchNorm over {self.groups} groups: a batch of {x.shape[0]} does not split into "
                             f"{self.groups} equal slices (give a batch size divisible by bn_groups)")
        first, *rest = x.chunk(self.groups)
        # slice 0 through the layer itself: the running statistics and num_batches_tracked move as process 0's
        out = [super().forward(first)]  # type: ignore[misc]
        out += [F.batch_norm(part, None, None, self.weight, self.bias, True, 0.0, self.eps) for part in rest]
        return torch.cat(out)


class GroupedBatchNorm1d(_GroupedBatchNorm, nn.BatchNorm1d):
    """nn.BatchNorm1d over `groups` slices of the batch (see the module docstring)."""


class GroupedBatchNorm2d(_GroupedBatchNorm, nn.BatchNorm2d):
    """nn.BatchNorm2d over `groups` slices of the batch (see the module docstring)."""


_GROUPED = {nn.BatchNorm1d: GroupedBatchNorm1d, nn.BatchNorm2d: GroupedBatchNorm2d}


def grouped(layer: nn.BatchNorm1d | nn.BatchNorm2d, groups: int) -> nn.Module:
    """A grouped copy of `layer` holding the very same parameter and buffer tensors."""
    cls = _GROUPED.get(type(layer))
    if cls is None:
        raise TypeError(f"cannot group {type(layer).__name__}: only BatchNorm1d and BatchNorm2d")
    new = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    for name in ("weight", "bias"):
        setattr(new, name, getattr(layer, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(new, name, getattr(layer, name))
    new.groups = groups
    return new.train(layer.training)


def group_batch_norms(module: nn.Module, groups: int) -> nn.Module:
    """Make every BatchNorm1d/2d of `module` normalise `groups` consecutive equal slices of its batch in
    training mode; in place, returns `module`. groups 1 leaves the model as it is."""
    if groups < 1:
        raise ValueError(f"BatchNorm groups must be >= 1, got {groups}")
    if groups == 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, _GroupedBatchNorm):
            child.groups = groups
        elif type(child) in _GROUPED:
            setattr(module, name, grouped(child, groups))
        else:
            group_batch_norms(child, groups)
    return module
