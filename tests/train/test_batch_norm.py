"""BatchNorm over groups of the batch (train/batch_norm.py) against N real BatchNorm layers, one per slice,
as N devices without synchronised BatchNorm run them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.support.runs import tiny_config
from train.batch_norm import GroupedBatchNorm1d, GroupedBatchNorm2d, group_batch_norms
from train.methods import build_training_model

GROUPS = 4


@pytest.mark.parametrize("shape", [(16, 5), (16, 3, 4, 4)], ids=["1d", "2d"])
def test_groups_normalise_like_one_batchnorm_per_slice(shape):
    g = torch.Generator().manual_seed(0)
    layer = nn.BatchNorm1d(shape[1]) if len(shape) == 2 else nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=g)
        layer.bias.uniform_(-0.5, 0.5, generator=g)
    devices = [copy.deepcopy(layer) for _ in range(GROUPS)]  # one per device, each sees its slice
    grouped = group_batch_norms(nn.Sequential(copy.deepcopy(layer)), GROUPS)[0]
    assert isinstance(grouped, GroupedBatchNorm1d | GroupedBatchNorm2d)
    x = torch.randn(shape, generator=g) * 3 + torch.arange(shape[0]).view(-1, *[1] * (len(shape) - 1))
    up = torch.randn(shape, generator=g)
    for _ in range(2):  # two steps: the running statistics accumulate
        x_ours = x.clone().requires_grad_(True)
        ours = grouped(x_ours)
        (ours * up).sum().backward()
        slices = [s.clone().requires_grad_(True) for s in x.chunk(GROUPS)]
        theirs = torch.cat([bn(s) for bn, s in zip(devices, slices, strict=True)])
        (theirs * up).sum().backward()
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(x_ours.grad, torch.cat([s.grad for s in slices]))
    # the parameters' gradient is the sum over the devices (DDP then averages it over the processes)
    torch.testing.assert_close(grouped.weight.grad, sum(bn.weight.grad for bn in devices))
    torch.testing.assert_close(grouped.bias.grad, sum(bn.bias.grad for bn in devices))
    # running statistics: device 0's (the official checkpoint's, and what DDP broadcasts), not the whole batch's
    torch.testing.assert_close(grouped.running_mean, devices[0].running_mean)
    torch.testing.assert_close(grouped.running_var, devices[0].running_var)
    assert int(grouped.num_batches_tracked) == 2
    whole = copy.deepcopy(layer)
    whole(x), whole(x)
    assert not torch.allclose(grouped.running_mean, whole.running_mean)
    # evaluation: the running statistics, as one BatchNorm
    grouped.eval(), devices[0].eval()
    torch.testing.assert_close(grouped(x), devices[0](x))


def test_grouping_a_model_keeps_its_tensors_and_names(tmp_path):
    cfg = tiny_config("propos", tmp_path)
    torch.manual_seed(0)
    plain = build_training_model(cfg, 1, 10)
    torch.manual_seed(0)
    model = build_training_model(tiny_config("propos", tmp_path, bn_groups=4), 1, 10)
    assert model.batch_groups == 4 and plain.batch_groups == 1
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batch_norms and all(isinstance(m, GroupedBatchNorm1d | GroupedBatchNorm2d) for m in batch_norms)
    assert not any(isinstance(m, GroupedBatchNorm1d | GroupedBatchNorm2d) for m in plain.modules())
    ours, theirs = model.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the target network's parameters stay out of the optimiser (requires_grad kept)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.online_backbone.parameters())


def test_under_ddp_each_process_groups_its_share():
    cfg = tiny_config("propos", ".", bn_groups=4)
    assert build_training_model(cfg, 1, 10, processes=2).batch_groups == 2
    assert build_training_model(cfg, 1, 10, processes=4).batch_groups == 1
    with pytest.raises(ValueError, match="bn_groups 4 must divide by the 3 processes"):
        build_training_model(cfg, 1, 10, processes=3)


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    layer = group_batch_norms(nn.Sequential(nn.BatchNorm1d(3)), 4)[0]
    with pytest.raises(ValueError, match="10 does not split into 4 equal slices"):
        layer(torch.randn(10, 3))
    with pytest.raises(ValueError, match="batch_size 100 does not split into bn_groups 8"):
        tiny_config("cc", tmp_path, batch_size=100, bn_groups=8)
