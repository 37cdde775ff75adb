"""Multi-process helpers for torchrun (DistributedDataParallel)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> ProcessGroup:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return ProcessGroup()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the summed gradient of its own slice.

    Every process computes the same loss over the gathered batch; summing the gradients over
    processes here and averaging them again in DDP gives exactly the single-process gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per process -> (world_size * B, ...) in rank order, differentiable; identity alone."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), 0)


def world_size() -> int:
    """Processes of the run (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def forward_shuffled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     permutation: torch.Tensor) -> torch.Tensor:
    """fn's rows for this process's x (B, ...), computed on the global batch shuffled by `permutation`
    (world_size x B,), the same on every process: each process runs fn on its share of the shuffled batch.

    MoCo's shuffled BatchNorm (ProPos's `shuffling_bn`, moco_wrapper.py _batch_shuffle_ddp): the BatchNorm
    groups of fn see random subsets of the global batch rather than one process's images.
    """
    world, rank = world_size(), dist.get_rank() if world_size() > 1 else 0
    everything = gather_with_grad(x)
    out = gather_with_grad(fn(everything[permutation.view(world, -1)[rank]]))
    return out[permutation.argsort()].view(world, -1, *out.shape[1:])[rank]
