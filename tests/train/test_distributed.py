"""Gathered contrastive losses over 2 gloo processes equal the single-process loss on the global batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.distributed import gather_with_grad
from train.losses.cc import cluster_contrastive_loss
from train.losses.contrastive import nt_xent

WORLD = 2


def _inputs():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    weight = torch.randn(6, 4, generator=g)
    return x1, x2, weight


def _loss(x1, x2, weight, gather):
    z1, z2 = gather(x1 @ weight), gather(x2 @ weight)
    p1, p2 = torch.softmax(z1, 1), torch.softmax(z2, 1)
    return nt_xent(z1, z2, 0.5) + cluster_contrastive_loss(p1, p2, 1.0)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    x1, x2, weight = _inputs()
    weight.requires_grad_(True)
    local = slice(rank * 4, (rank + 1) * 4)
    loss = _loss(x1[local], x2[local], weight, gather_with_grad)
    loss.backward()
    dist.all_reduce(weight.grad)
    weight.grad /= WORLD  # what DistributedDataParallel does with the gradients
    torch.save({"loss": loss.detach(), "grad": weight.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_loss_and_gradient_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    x1, x2, weight = _inputs()
    weight.requires_grad_(True)
    loss = _loss(x1, x2, weight, lambda t: t)
    loss.backward()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
        assert torch.allclose(got["grad"], weight.grad, atol=1e-6)


def test_without_gather_the_loss_differs():
    # The check above can fail: per-process losses without gathering are not the global loss.
    x1, x2, weight = _inputs()
    full = _loss(x1, x2, weight, lambda t: t)
    half = _loss(x1[:4], x2[:4], weight, lambda t: t)
    assert not torch.allclose(full, half, atol=1e-3)
