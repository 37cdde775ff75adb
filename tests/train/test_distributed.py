"""Over 2 gloo processes: gathered contrastive losses equal the single-process loss on the global batch, and the
trainer's step equals the single-process step with one BatchNorm group per process."""

import contextlib
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.support.runs import tiny_config
from train.distributed import ProcessGroup, gather_with_grad
from train.losses.cc import cluster_contrastive_loss
from train.losses.contrastive import nt_xent
from train.methods import build_training_model
from train.methods.base import StepContext
from train.trainer import train_state, train_step

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


# --- the trainer's step on 2 processes equals it on one process with 2 BatchNorm groups ---------------------

BATCH = 8
STEP_CASES = {
    # the SimCLR-only epoch leaves the tree head without a gradient: DDP must look for unused parameters
    "cohiclust": (dict(simclr_epochs=1, prune_start_epoch=2, epochs=3), (0, 1)),
    # the target's BatchNorm on the batch shuffled across the processes, PSL per process (noise off: it is
    # drawn per process)
    "propos": (dict(psl_warmup_epochs=0, noise_sigma=0.0, epochs=2), (0, 0)),
    "propos_v2": (dict(psl_warmup_epochs=0, noise_sigma=0.0, epochs=2, v2=True), (0, 0)),
}


def _train_steps(case: str, group: ProcessGroup) -> dict[str, torch.Tensor]:
    """The trainer's steps of STEP_CASES[case] on this process's share of a fixed batch; the weights after each."""
    overrides, epochs = STEP_CASES[case]
    method = case.split("_")[0]
    cfg = tiny_config(method, Path("."), batch_size=BATCH, bn_groups=2, **overrides)
    torch.manual_seed(0)
    model = build_training_model(cfg, 1, 10, processes=group.world_size)
    if method == "propos":
        model.pseudo_labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
    state = train_state(cfg, model, group, contextlib.nullcontext, steps_per_epoch=1)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(BATCH, 1, 16, 16, generator=g), torch.rand(BATCH, 1, 16, 16, generator=g)
    share = slice(group.rank * BATCH // group.world_size, (group.rank + 1) * BATCH // group.world_size)
    shared = torch.Generator().manual_seed(1)  # the same stream on every process (the target's shuffles)
    model.train()
    after = {}
    for step, epoch in enumerate(epochs):
        ctx = StepContext(epoch, cfg.epochs, step, 1, torch.Generator().manual_seed(2), torch.arange(BATCH)[share],
                          shared_generator=shared)
        train_step(state, x1[share], x2[share], ctx)
        after.update({f"{step}/{k}": v.clone() for k, v in model.state_dict().items()})
        after.update({f"{step}/grad/{k}": p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    return after


def _step_worker(rank: int, port: int, out_dir: str, case: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    after = _train_steps(case, ProcessGroup(rank, WORLD, rank))
    if rank == 0:
        torch.save(after, f"{out_dir}/rank0.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_the_step_on_two_processes_equals_one_process_with_two_batchnorm_groups(case, tmp_path):
    mp.spawn(_step_worker, args=(_free_port(), str(tmp_path), case), nprocs=WORLD, join=True)
    distributed = torch.load(tmp_path / "rank0.pt")
    alone = _train_steps(case, ProcessGroup())
    assert distributed.keys() == alone.keys()
    for name, expected in alone.items():  # gradients, parameters, BatchNorm buffers (process 0's: group 0's)
        # Adam's first steps move a weight by about lr whatever its gradient's size: one whose gradient is ~0 but
        # for rounding may land 1e-4 away, so the weights (and the gradients at them) agree to 1e-4, the first
        # step's gradients closely (to 1e-6 at least: the gradient of a bias before a BatchNorm is 0 but for
        # rounding)
        scale = float(expected.abs().max()) if expected.is_floating_point() else 0.0
        atol = max(1e-6, (1e-5 if name.startswith("0/") else 1e-4) * scale) if "/grad/" in name else 1e-4
        torch.testing.assert_close(distributed[name], expected, rtol=1e-4, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    if case == "cohiclust":  # the SimCLR-only step left the tree head exactly as it was
        torch.manual_seed(0)
        initial = build_training_model(tiny_config("cohiclust", Path("."), batch_size=BATCH, bn_groups=2,
                                                   **STEP_CASES[case][0]), 1, 10).state_dict()
        for key in ("tree_head.0.weight", "tree_head.0.bias"):
            assert torch.equal(distributed[f"0/{key}"], initial[key])
            assert not torch.equal(distributed[f"1/{key}"], initial[key])  # the tree trains from the next epoch
