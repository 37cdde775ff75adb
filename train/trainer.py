"""The training loop every method shares. Read top to bottom: the pieces (data, evaluation, one training
epoch), then `train` in four steps: `set_up` (device and processes, checks, data, model), `restore` (the
checkpoint it resumes from, or the parent run it starts from), `fit` (the epochs and their checkpoints)
and `finish` (the final evaluation and the run's artefacts).

Data lives on the training device as uint8 (N, C, S, S) at its stored side S; each step indexes a
batch and augments two views there, cropped to the model's input size (train/data/augment.py), and
evaluation resizes each batch to that size there too (`resize_images`). A run trains on the
`train_splits` of its data set, scores the `eval_splits`, and may give every epoch a first pass over
the `instance_splits` with the method's instance loss only (CC on STL-10). Randomness per epoch comes
from generators seeded with (seed, epoch), so a run resumed from its last completed epoch continues
exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from contract import files
from contract.card import ClusterStats
from contract.names import (
    ASSIGNMENTS_FILE,
    CALIBRATION_SAMPLE_FILE,
    CHECKPOINT_FILE,
    CLUSTER_LEVELS_FILE,
    CLUSTER_SAMPLES_FILE,
    CLUSTER_STATS_FILE,
    CONFIG_FILE,
    CONFUSION_FILE,
    GALLERY_FILE,
    IMAGES_USED_FILE,
    INIT_FILE,
    LEVELS_PLOT_FILE,
    MAP_POINTS,
    METRICS_FILE,
    PARITY_SAMPLE_FILE,
    RESULTS_FILE,
    TENSORBOARD_DIR,
)
from train import metrics, report
from train.budget import Projection, StepClock, fitting_command, probe_step_seconds
from train.checkpoint import read_checkpoint, save_checkpoint
from train.cluster_stats import cluster_stats
from train.config import Config, check_schedule, describe_schedule, split_names
from train.data.augment import AugmentParams, BatchAugment, resize_images
from train.data.cache import FolderDecoder
from train.data.datasets import DATASETS, ImageData, load_dataset, resolve_splits
from train.distributed import ProcessGroup, gather_with_grad, init_from_env
from train.levels import MAX_CLUSTERS, cluster_levels
from train.methods import METHODS, build_training_model, get_method, groups_per_process, make_config
from train.methods.base import ClusteringMethod, EpochContext, StepContext
from train.parents import load_parent, resolve_parent

PARITY_IMAGES = 64
"""Images of the evaluated data saved with the run for export's parity check (evenly spaced)."""
CALIBRATION_IMAGES = 1024
CALIBRATION_BYTES = 128 << 20
"""The calibration sample: up to this many training images, and fewer when they would take more bytes (224 px RGB:
873 images)."""
INSTANCE_STREAM = 20_000
"""Random streams of the instance-loss-only pass (its order, then its augmentation per process)."""
PROBE_STREAM = 30_000
"""The random stream of the views that estimate a step's time before the first one (train/budget.py)."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but torch sees no CUDA device: use --device cpu or auto")
    return device


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """Independent, reproducible random stream per (seed, epoch, stream)."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + epoch * 7919 + stream)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images scaled to [0, 1].

    Summed in float64 `chunk` images at a time: STL-10's 100k unlabelled images would take 11 GB as floats.
    """
    channels = images.shape[1]
    total, sums, squares = 0, torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    for part in images.split(chunk):
        x = part.to(torch.float64).div(255).transpose(0, 1).reshape(channels, -1)
        total += x.shape[1]
        sums += x.sum(1).cpu()
        squares += x.square().sum(1).cpu()
    mean = sums / total
    std = ((squares - total * mean.square()) / max(1, total - 1)).clamp(min=0).sqrt()
    return mean.tolist(), std.clamp(min=1e-3).tolist()


def lr_factor(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then constant, or cosine from 1 down to lr_min over cosine_epochs; per optimiser step.

    cosine_epochs 0 spans the rest of the run (it ends at lr_min); ProPos's official schedule spans
    `epochs` after its warm-up, so it stops short of the floor.
    """
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        total = max(1, (cfg.cosine_epochs or cfg.epochs - cfg.warmup_epochs) * steps_per_epoch)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
        return cfg.lr_min + (1 - cfg.lr_min) * cosine
    if cfg.schedule != "constant":
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose constant or cosine")
    return 1.0


def build_optimizer(cfg: Config, model: ClusteringMethod) -> torch.optim.Optimizer:
    groups = [{"params": g["params"], "lr": cfg.lr * g.get("lr_scale", 1.0)} for g in model.param_groups()]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam or sgd")


@dataclass
class RunData:
    """The data of a run, each part loaded once at the stored side."""

    train: ImageData  # the train_splits
    eval: ImageData  # the eval_splits (the same object as train when the splits agree)
    instance: ImageData | None  # the instance_splits, or None


def load_run_data(cfg: Config, decoder: FolderDecoder | None = None) -> RunData:
    """Load the train, evaluation and instance-pass splits of cfg.dataset at cfg.stored_side()
    (folders of image files through `decoder`: see train/data/cache.py)."""
    side = cfg.stored_side()

    def load(splits: Sequence[str] | None) -> ImageData:
        return load_dataset(cfg.dataset, cfg.data_dir, side, splits, decoder)

    train = load(split_names(cfg.train_splits))
    eval_splits = resolve_splits(cfg.dataset, split_names(cfg.eval_splits) or train.splits)
    evaluation = train if eval_splits == train.splits else load(eval_splits)
    instance_splits = split_names(cfg.instance_splits)
    instance = load(instance_splits) if instance_splits else None
    return RunData(train, evaluation, instance)


@torch.no_grad()
def map_batches(model: ClusteringMethod, fn, images: torch.Tensor, batch_size: int, autocast,
                size: int, to_cpu: bool = False, crop: float = 1.0):
    """fn over float [0, 1] batches of uint8 images resized to size x size, model in eval mode; results concatenated.

    fn returns a tensor or a dict of tensors; floating results come back as float32. crop: the central fraction
    of each image kept before the resize (cfg.eval_crop()).
    """
    was_training = model.training
    model.eval()
    parts = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = resize_images(images[start:start + batch_size], size, crop)
            with autocast():
                parts.append(fn(batch.float().div(255)))
    finally:
        model.train(was_training)

    def cat(values: list[torch.Tensor]) -> torch.Tensor:
        out = torch.cat([v.float() if v.is_floating_point() else v for v in values])
        return out.cpu() if to_cpu else out

    if isinstance(parts[0], dict):
        return {key: cat([p[key] for p in parts]) for key in parts[0]}
    return cat(parts)


def predict_dataset(model: ClusteringMethod, images: torch.Tensor, batch_size: int, autocast,
                    size: int, crop: float = 1.0) -> dict[str, torch.Tensor]:
    """Head outputs for every un-augmented image resized to the model's size x size, on the CPU."""
    return map_batches(model, model.predict, images, batch_size, autocast, size, to_cpu=True, crop=crop)


def evaluate(model: ClusteringMethod, data: ImageData, images: torch.Tensor, cfg: Config,
             autocast) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    outputs = predict_dataset(model, images, cfg.eval_batch_size, autocast, cfg.image_size, cfg.eval_crop())
    clusters = outputs["cluster"].numpy()
    scores = {"clusters_used": int(np.unique(clusters).size)}
    if data.labels is not None:
        scores.update(metrics.clustering_metrics(data.labels.numpy(), clusters))
    return outputs, scores


def step_outputs(ddp_model, x1: torch.Tensor, x2: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
    """The method's forward on two views (under DDP), every output gathered across processes with gradients:
    what the method's `loss` and `on_step_end` see, so both work on the global batch."""
    return {k: gather_with_grad(v) for k, v in ddp_model(x1, x2, ctx).items()}


def epoch_steps(images: torch.Tensor, cfg: Config) -> int:
    """Optimiser steps of one pass over `images`: the last partial batch is dropped (BN and the losses want
    full ones)."""
    return images.shape[0] // cfg.batch_size


def epoch_order(images: torch.Tensor, cfg: Config, generator: torch.Generator,
                weights: torch.Tensor | None) -> torch.Tensor:
    """The data-set indices of one pass: a permutation, or with per-image `weights` (N,) as many draws
    with replacement in proportion to them (ProPos's class-balanced resampling)."""
    if weights is None:
        return torch.randperm(images.shape[0], generator=generator, device=images.device)
    draws = epoch_steps(images, cfg) * cfg.batch_size
    return torch.multinomial(weights.to(images.device, torch.float64), draws, replacement=True, generator=generator)


@dataclass
class TrainState:
    """What the training steps work with; restore builds it, fit advances it, every checkpoint saves it."""

    cfg: Config
    model: ClusteringMethod
    ddp_model: Any  # the model as its forward runs: under DistributedDataParallel and torch.compile when on
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    augment: BatchAugment
    autocast: Callable[[], contextlib.AbstractContextManager]
    group: ProcessGroup
    steps_per_epoch: int  # optimiser steps of an epoch, all its passes together
    epochs_done: int = 0
    train_seconds: float = 0.0
    clock: StepClock | None = None  # times the first steps of this process's fit (main process only)


def train_one_epoch(state: TrainState, images: torch.Tensor, epoch: int, *, phase: str = "train",
                    first_step: int = 0, weights: torch.Tensor | None = None) -> dict[str, float]:
    """One pass over `images` (uint8, stored side); returns its mean losses. phase "train" (the method's loss)
    or "instance" (the instance-loss-only pass); first_step: this pass's first step within the epoch;
    weights: sampling weights (None: a permutation)."""
    cfg, model, group = state.cfg, state.model, state.group
    device = images.device
    stream = 0 if phase == "train" else INSTANCE_STREAM
    order_gen = epoch_generator(cfg.seed, epoch, stream, device)   # same on every process
    aug_gen = epoch_generator(cfg.seed, epoch, stream + 1 + group.rank, device)
    steps = epoch_steps(images, cfg)
    order = epoch_order(images, cfg, order_gen, weights)
    sums: dict[str, float] = {}
    model.train()
    if state.clock is not None:
        state.clock.begin()
    for i in range(steps):
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size][group.rank::group.world_size]
        batch = images[idx]
        x1, x2 = state.augment(batch, aug_gen), state.augment(batch, aug_gen)
        if cfg.channels_last and device.type == "cuda":
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(epoch, cfg.epochs, epoch * state.steps_per_epoch + first_step + i, state.steps_per_epoch,
                          aug_gen, idx, phase, shared_generator=order_gen)
        for k, v in train_step(state, x1, x2, ctx).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if state.clock is not None:
            state.clock.step_done()
    return {k: v / max(1, steps) for k, v in sums.items()}


def train_step(state: TrainState, x1: torch.Tensor, x2: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
    """One optimiser step on two augmented views (B, C, S, S) of this process's batch: the method's forward and
    gather (`step_outputs`), its loss, backward, the optimiser and schedule steps, then `on_step_end` with the
    outputs. Returns the losses, detached; the gradients the optimiser stepped with stay in the parameters'
    .grad until the next step."""
    model = state.model
    with state.autocast():
        outputs = step_outputs(state.ddp_model, x1, x2, ctx)
        losses = model.loss(outputs, ctx)
    state.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    state.optimizer.step()
    state.scheduler.step()
    model.on_step_end(ctx, {k: v.detach() for k, v in outputs.items()})
    return {k: v.detach() for k, v in losses.items()}


@dataclass
class Run:
    """One run as set-up leaves it: where, on what, with which data and a freshly initialised model."""

    cfg: Config
    method: type[ClusteringMethod]
    device: torch.device
    group: ProcessGroup
    dir: Path
    log: Callable[[str], None]  # prints on the main process only
    data: RunData
    images: torch.Tensor  # the train splits, uint8 on the device
    eval_images: torch.Tensor  # the eval splits (the same tensor when the splits agree)
    instance_images: torch.Tensor | None  # the instance splits, or None
    model: ClusteringMethod
    meta: dict[str, Any]  # what every checkpoint records about the data and the model
    autocast: Callable[[], contextlib.AbstractContextManager]
    checkpoint: dict[str, Any] | None  # the run directory's last checkpoint: the run resumes from it
    parent_file: Path | None  # a fresh run of a method with a parent: the checkpoint it starts from


def train(cfg: Config) -> dict[str, Any]:
    """Train (or resume) one run; returns the contents of results.json (on other processes than the main one: {})."""
    run = set_up(cfg)
    state = restore(run)
    fit(run, state)
    return finish(run, state) if run.group.is_main else {}


def set_up(cfg: Config) -> Run:
    """Device and process group, the checks, the parent run (before any data is read), the data and the model."""
    method = get_method(cfg.method)
    check_schedule(cfg)
    device, group = join_process_group(cfg)
    if cfg.batch_size % group.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the {group.world_size} processes")
    groups_per_process(cfg, group.world_size)  # before any data is read
    if cfg.init and method.parent is None:
        raise ValueError(f"--init: {cfg.method} starts from no other run (only methods with a parent do)")
    run_dir = cfg.resolved_run_dir()
    log = (lambda msg: print(msg, flush=True)) if group.is_main else (lambda msg: None)
    checkpoint = read_checkpoint(run_dir / CHECKPOINT_FILE) if (run_dir / CHECKPOINT_FILE).exists() else None
    # before any data is read: a fresh run of a method with a parent needs its parent run (--train-parent: trains it)
    parent_file = (resolve_parent(cfg, method.parent, run_dir, log, train) if method.parent and checkpoint is None
                   else None)
    if cfg.instance_splits and not method.instance_pass:
        raise ValueError(f"--instance-splits: {cfg.method} has no instance loss to train alone "
                         f"(methods with one: {', '.join(sorted(n for n, m in METHODS.items() if m.instance_pass))})")
    decoder = FolderDecoder(cfg.resolved_cache_dir(), cfg.max_images, cfg.seed, str(device), log=log)
    data = load_run_data(cfg, decoder)  # DoesNotFit before decoding
    num_clusters = check_data(cfg, data, log)
    mean, std = (cfg.normalization_constants() or channel_stats(data.train.images)) if cfg.normalize else (None, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    if group.is_main:
        used = data.train.sources + (data.instance.sources if data.instance is not None else [])
        files.write_text(run_dir / IMAGES_USED_FILE, "".join(f"{source}\n" for source in used))
    in_channels = data.train.images.shape[1]
    meta = {"in_channels": in_channels, "num_clusters": num_clusters,
            "class_names": data.eval.class_names or data.train.class_names,
            "dataset": cfg.dataset, "image_size": cfg.image_size, "method": cfg.method}
    torch.manual_seed(cfg.seed)
    model = build_training_model(cfg, in_channels, num_clusters, mean, std, processes=group.world_size)
    images = data.train.images.to(device)
    return Run(cfg, method, device, group, run_dir, log, data, images,
               eval_images=images if data.eval is data.train else data.eval.images.to(device),
               instance_images=None if data.instance is None else data.instance.images.to(device),
               model=model, meta=meta, autocast=autocast_for(cfg, device), checkpoint=checkpoint,
               parent_file=parent_file)


def join_process_group(cfg: Config) -> tuple[torch.device, ProcessGroup]:
    """The training device and this process's place among torchrun's processes; sets torch's CPU threads."""
    device = pick_device(cfg.device)
    group = init_from_env(device.type)
    if group.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return device, group


def check_data(cfg: Config, data: RunData, log: Callable[[str], None]) -> int:
    """Logs the images skipped as unreadable; ValueError without a cluster count, with more clusters than
    images or with too few images for a batch. Returns the number of clusters (--num-clusters, else the data
    set's class count)."""
    for part in {id(d): d for d in (data.train, data.eval, data.instance) if d is not None}.values():
        for skipped in part.skipped:
            log(f"skipped unreadable image {skipped}")
    num_clusters = cfg.num_clusters or len(data.eval.class_names or data.train.class_names or [])
    if num_clusters < 2:
        raise ValueError(f"{cfg.dataset} has no class labels: give --num-clusters")
    if num_clusters > data.train.images.shape[0]:  # a cluster needs an image; the losses' (K, K) terms grow as K^2
        raise ValueError(f"--num-clusters {num_clusters} is more than the {data.train.images.shape[0]} training images")
    for part in (data.train, data.instance):
        if part is not None and part.images.shape[0] < cfg.batch_size:
            count = part.images.shape[0]
            fits = 2 ** max(1, (count // 2).bit_length() - 1)  # a power of two that leaves two steps an epoch
            raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {count} images of "
                             f"{_describe_source(cfg, part)}: give --batch-size {fits} or smaller")
    return num_clusters


def _describe_source(cfg: Config, part: ImageData) -> str:
    """What a user calls the images of `part`: "the folder ~/photos", "digits", "cifar10's train split"."""
    info = DATASETS[cfg.dataset]
    if len(info.splits) > 1:
        return f"{cfg.dataset}'s {' and '.join(part.splits)} split{'s' if len(part.splits) > 1 else ''}"
    sampled = f" (--max-images {cfg.max_images})" if cfg.max_images else ""
    return (f"the folder {cfg.data_dir}" if info.folder else cfg.dataset) + sampled


def autocast_for(cfg: Config, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The context the forward passes run in: bf16 autocast with --amp (on CUDA and on the CPU alike), else
    nothing (fp32, as every official code trains)."""
    if cfg.amp:
        return partial(torch.autocast, device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def restore(run: Run) -> TrainState:
    """The state the first epoch starts from: the run directory's checkpoint (weights, optimiser, schedule,
    random state, epochs done), or on a fresh run of a method with a parent the parent's weights, scored
    "before" training. Writes config.json and the parity sample (so an unfinished run exports too)."""
    cfg, model, checkpoint = run.cfg, run.model, run.checkpoint
    if checkpoint is not None:
        if checkpoint["method"] != cfg.method:
            raise ValueError(f"{run.dir / CHECKPOINT_FILE} holds a {checkpoint['method']} run, not {cfg.method}: "
                             "use another --run-dir")
        model.load_state_dict(checkpoint["model"])
    model.to(run.device)
    if run.parent_file is not None:
        start_from_parent(run)
    if cfg.channels_last and run.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    instance_steps = 0 if run.instance_images is None else epoch_steps(run.instance_images, cfg)
    state = train_state(cfg, model, run.group, run.autocast, instance_steps + epoch_steps(run.images, cfg))
    if checkpoint is not None:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        state.scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        state.epochs_done, state.train_seconds = checkpoint["epoch"], checkpoint.get("train_seconds", 0.0)
        log_resume(run, state.epochs_done)
    if run.group.is_main and (checkpoint is None or state.epochs_done < cfg.epochs):  # a finished run keeps config.json
        cfg.save(run.dir / CONFIG_FILE)
    if run.group.is_main and not (run.dir / PARITY_SAMPLE_FILE).is_file():  # lets an unfinished run export too
        save_parity_sample(run.dir / PARITY_SAMPLE_FILE, run.data.eval, cfg.image_size)
    return state


def train_state(cfg: Config, model: ClusteringMethod, group: ProcessGroup,
                autocast: Callable[[], contextlib.AbstractContextManager], steps_per_epoch: int) -> TrainState:
    """A fresh state for the model's training: its optimiser and schedule, the forward under
    DistributedDataParallel with several processes (looking for unused parameters only for a method whose
    steps may leave some without a gradient) and torch.compile with cfg.compile."""
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
    ddp_model = model
    if group.world_size > 1:
        ddp_model = DistributedDataParallel(model, find_unused_parameters=model.some_steps_skip_parameters())
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)
    return TrainState(cfg, model, ddp_model, optimizer, scheduler, BatchAugment(AugmentParams.from_config(cfg)),
                      autocast, group, steps_per_epoch)


def start_from_parent(run: Run) -> None:
    """Load the parent checkpoint into the model; the main process scores it and records both in init.json
    (finish reports these "before" metrics beside the final ones)."""
    init = load_parent(run.model, run.parent_file, run.cfg, run.method.parent)
    if run.group.is_main:
        init["before"] = evaluate(run.model, run.data.eval, run.eval_images, run.cfg, run.autocast)[1]
        run.log(f"{run.cfg.method}: {run.method.parent} model {run.parent_file} (epoch {init['epoch']}) "
                f"before training: {_summary(init['before'])}")
        files.write_json(run.dir / INIT_FILE, init)


def log_resume(run: Run, epochs_done: int) -> None:
    """Say what a resumed run changed in its settings and where it goes on from."""
    cfg = run.cfg
    changed = {k: (v, getattr(cfg, k)) for k, v in run.checkpoint["config"].items()
               if hasattr(cfg, k) and getattr(cfg, k) != v}
    if changed:
        run.log("resuming with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    run.log(f"{run.dir} already finished {epochs_done} epochs: evaluating it again" if epochs_done >= cfg.epochs
            else f"resuming {run.dir} from epoch {epochs_done}/{cfg.epochs}")


def fit(run: Run, state: TrainState) -> None:
    """The epochs left, each followed by its record (metrics.jsonl, TensorBoard) and a checkpoint, and every
    eval_every epochs by an evaluation."""
    cfg = run.cfg
    writer = _tensorboard(run.dir) if run.group.is_main else None
    run.log(f"{cfg.method} on {cfg.dataset}: {_describe_data(run.data)}, {run.model.num_clusters} clusters, "
            f"{cfg.backbone} ({cfg.stem} stem) at {cfg.image_size} px, {cfg.epochs} epochs, device {run.device}"
            + (f" x{run.group.world_size}" if run.group.world_size > 1 else ""))
    run.log(describe_schedule(cfg, make_config(cfg.method, dataset=cfg.dataset, preset=cfg.preset)))
    if run.group.is_main and state.epochs_done < cfg.epochs:
        state.clock = project_time(run, state)

    from tqdm import tqdm  # here, not at the top: bench/train_throughput.py imports this module on bare GPU machines

    bar = tqdm(range(state.epochs_done, cfg.epochs), initial=state.epochs_done, total=cfg.epochs, desc="epochs",
               disable=not (cfg.progress and run.group.is_main), dynamic_ncols=True)
    for epoch in bar:
        record = fit_epoch(run, state, epoch)
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs and run.group.is_main:
            record.update(evaluate(state.model, run.data.eval, run.eval_images, cfg, run.autocast)[1])
        if run.group.is_main:
            save_checkpoint({"method": cfg.method, "config": cfg.to_dict(), "meta": run.meta,
                             "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                             "scheduler": state.scheduler.state_dict(), "epoch": state.epochs_done,
                             "train_seconds": state.train_seconds, "rng": {"torch": torch.get_rng_state()}},
                            run.dir / CHECKPOINT_FILE)
            _log_record(run.dir, writer, record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("loss", "nmi", "acc")})
    bar.close()
    if writer is not None:
        writer.close()


def fit_epoch(run: Run, state: TrainState, epoch: int) -> dict[str, Any]:
    """One epoch: the method's epoch hooks around the instance-loss-only pass (CC on STL-10: over the
    unlabelled split first) and the training pass. Returns the epoch's record for metrics.jsonl."""
    cfg, model = run.cfg, state.model
    t0 = time.perf_counter()
    ctx = EpochContext(epoch, cfg.epochs, run.images, epoch_generator(cfg.seed, epoch, 10_000, run.device),
                       lambda fn: map_batches(model, fn, run.images, cfg.eval_batch_size, run.autocast, cfg.image_size,
                                              crop=cfg.eval_crop()),
                       run.dir)
    model.on_epoch_start(ctx)
    losses: dict[str, float] = {}
    instance_steps = 0
    if run.instance_images is not None:
        instance = train_one_epoch(state, run.instance_images, epoch, phase="instance")
        losses.update({f"instance_pass_{k}": v for k, v in instance.items()})
        instance_steps = epoch_steps(run.instance_images, cfg)
    losses.update(train_one_epoch(state, run.images, epoch, first_step=instance_steps, weights=model.sample_weights()))
    model.on_epoch_end(ctx)
    if state.clock is not None:
        state.clock.epoch_done()
    state.epochs_done = epoch + 1
    state.train_seconds += time.perf_counter() - t0
    return {"epoch": epoch + 1, "lr": state.scheduler.get_last_lr()[0], **losses,
            "train_seconds": round(state.train_seconds, 2)}


def project_time(run: Run, state: TrainState) -> StepClock:
    """Print the run's projected time estimated before its first step (train/budget.py), and return the clock
    that measures it again on the first steps."""
    cfg = run.cfg
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    projection = Projection((cfg.epochs - state.epochs_done) * state.steps_per_epoch, state.steps_per_epoch,
                            run.device, run.log, partial(fitting_command, cfg, run.meta["in_channels"]))
    generator = epoch_generator(cfg.seed, state.epochs_done, PROBE_STREAM, run.device)
    world = run.group.world_size
    per_step, count = probe_step_seconds(state.model.backbone, lambda x: state.augment(x, generator), run.images,
                                         cfg.batch_size // world, run.autocast, sync, groups_per_process(cfg, world))
    projection.report(per_step, f"estimated from {count} images through the backbone")
    return StepClock(partial(projection.report, how="measured on its first steps"), sync)


def _describe_data(data: RunData) -> str:
    """"60000 images (3, 32, 32) of train,test" and the other parts, for the start-of-run line."""
    def part(d: ImageData) -> str:
        return f"{d.images.shape[0]} images {tuple(d.images.shape[1:])} of {','.join(d.splits)}"

    text = part(data.train)
    if data.instance is not None:
        text += f", instance pass over {part(data.instance)}"
    if data.eval is not data.train:
        text += f", evaluated on {part(data.eval)}"
    return text


def finish(run: Run, state: TrainState) -> dict[str, Any]:
    """Final evaluation and the run directory's artefacts; returns what results.json holds."""
    cfg, model, data, images, run_dir = run.cfg, state.model, run.data.eval, run.eval_images, run.dir
    outputs, scores = evaluate(model, data, images, cfg, run.autocast)
    clusters = outputs["cluster"].numpy()
    labels = data.labels.numpy() if data.labels is not None else None
    confidence = outputs["probabilities"].max(1).values.numpy()
    report.write_assignments(run_dir / ASSIGNMENTS_FILE, data.sources, clusters, confidence, labels, data.class_names)
    report.plot_gallery(run_dir / GALLERY_FILE, data.images.numpy(), clusters, seed=cfg.seed,
                        num_clusters=model.num_clusters)
    if labels is not None:
        report.plot_confusion(run_dir / CONFUSION_FILE, labels, clusters, data.class_names)
    save_parity_sample(run_dir / PARITY_SAMPLE_FILE, data, cfg.image_size, model)
    stats = save_cluster_stats(run_dir, data, outputs)
    save_calibration_sample(run_dir / CALIBRATION_SAMPLE_FILE, run.data.train, cfg.image_size, cfg.seed)
    save_cluster_levels(run_dir, outputs, model.cluster_tree(), stats.default_names(), cfg.seed)
    scores.update(model.write_artifacts(run_dir, outputs, data.labels, data.images))
    init_file = run_dir / INIT_FILE
    if run.method.parent and init_file.is_file():  # a resumed run too: init.json holds the parent's scores
        init = files.read_json(init_file)
        scores.update(init_checkpoint=init["checkpoint"], before=init["before"],
                      after={k: v for k, v in scores.items() if k in ("nmi", "acc", "ari", "clusters_used")})
        print(f"{cfg.method} from {init['checkpoint']}: before {_summary(init['before'])}; "
              f"after {_summary(scores['after'])}", flush=True)
    results = {"finished": True, "method": cfg.method, "dataset": cfg.dataset, "backbone": cfg.backbone,
               "epochs": cfg.epochs, "num_images": int(images.shape[0]),
               "train_seconds": round(state.train_seconds, 1), "metrics": scores, "skipped_images": data.skipped}
    files.write_json(run_dir / RESULTS_FILE, results)
    print(f"finished {cfg.method} on {cfg.dataset} in {state.train_seconds:.0f} s: {_summary(scores)}"
          f"  ({scores['clusters_used']} clusters used) -> {run_dir}", flush=True)
    return results


def save_parity_sample(path: Path, data: ImageData, image_size: int, model: ClusteringMethod | None = None,
                       count: int = PARITY_IMAGES) -> None:
    """`count` evaluated images spread evenly over the data set [and the model's fp32 CPU outputs on them].

    Export checks its graphs on these images, so it needs no data set. parity_sample.npz holds images
    uint8 (n, C, S, S) at the model's input side S (the stored images through the evaluation resize:
    what the model is evaluated on, and what the gateway feeds it), sources (n,) and, once training
    has finished, reference_<output> per head output.
    """
    total = data.images.shape[0]
    index = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(np.int64))
    images = resize_images(data.images[index], image_size)
    reference: dict[str, torch.Tensor] = {}
    if model is not None:
        device = next(model.parameters()).device
        model.cpu()
        try:
            reference = predict_dataset(model, images, len(index), contextlib.nullcontext, image_size)
        finally:
            model.to(device)
    with files.atomic_open(path, "wb") as f:
        np.savez_compressed(f, images=images.numpy(), sources=np.array([data.sources[i] for i in index]),
                            **{f"reference_{k}": v.numpy() for k, v in reference.items()})


def save_calibration_sample(path: Path, data: ImageData, image_size: int, seed: int) -> None:
    """A seeded random sample of the training images (in random order, at the model's input side S, as the
    parity sample): what export quantizes with and judges a reduced-precision graph on, without the data set.

    calibration_sample.npz holds images uint8 (n, C, S, S), sources (n,) and index (n,) into `data`;
    n = min(CALIBRATION_IMAGES, the images, what fits in CALIBRATION_BYTES)."""
    total = data.images.shape[0]
    per_image = data.images.shape[1] * image_size * image_size
    count = min(CALIBRATION_IMAGES, total, max(1, CALIBRATION_BYTES // per_image))
    index = np.random.default_rng(seed).choice(total, size=count, replace=False)
    images = resize_images(data.images[torch.from_numpy(index)], image_size)
    with files.atomic_open(path, "wb") as f:
        np.savez_compressed(f, images=images.numpy(), sources=np.array([data.sources[i] for i in index]), index=index)


def save_cluster_stats(run_dir: Path, data: ImageData, outputs: dict[str, torch.Tensor]) -> ClusterStats:
    """cluster_stats.json (what the model card and the gateway's flags are made of) and cluster_samples.npz
    (each cluster's most confident training images), from the final evaluation's outputs."""
    labels = data.labels.numpy() if data.labels is not None else None
    stats = cluster_stats(outputs["embedding"].numpy(), outputs["probabilities"].numpy(), outputs["cluster"].numpy(),
                          labels, data.class_names)
    stats.write(run_dir / CLUSTER_STATS_FILE)
    index = np.array([i for c in stats.clusters for i in c.samples], np.int64)
    cluster = np.array([c.id for c in stats.clusters for _ in c.samples], np.int64)
    total = len(outputs["cluster"])
    spread = np.unique(np.linspace(0, total - 1, min(MAP_POINTS, total)).round().astype(np.int64))
    with files.atomic_open(run_dir / CLUSTER_SAMPLES_FILE, "wb") as f:
        np.savez_compressed(f, images=data.images[index].numpy(), cluster=cluster, index=index,
                            sources=np.array([data.sources[i] for i in index]),
                            map_embedding=outputs["embedding"][spread].numpy(),
                            map_cluster=outputs["cluster"][spread].numpy())
    return stats


def save_cluster_levels(run_dir: Path, outputs: dict[str, torch.Tensor], tree: list[frozenset[int]] | None,
                        names: list[str], seed: int) -> None:
    """cluster_levels.json (the clusters merged pairwise into fewer, the score of every level and the suggested
    number of clusters) and levels.png, from the final evaluation's outputs; prints the suggestion."""
    probabilities = outputs["probabilities"].numpy()
    levels = cluster_levels(outputs["embedding"].numpy(), probabilities, outputs["cluster"].numpy(), tree, seed)
    if levels is None:
        print(f"no merge hierarchy: {probabilities.shape[1]} clusters are more than {MAX_CLUSTERS}", flush=True)
        return
    levels.write(run_dir / CLUSTER_LEVELS_FILE)
    report.plot_levels(run_dir / LEVELS_PLOT_FILE, levels, names)
    print(f"suggested clusters: {levels.summary()} of the {levels.num_clusters} trained "
          f"(serve at any k from 1 to {levels.num_clusters}: ?clusters=k)", flush=True)


def _summary(scores: dict[str, Any] | None) -> str:
    return "  ".join(f"{k.upper()} {scores[k]:.4f}" for k in ("nmi", "acc", "ari") if k in scores) or "no labels"


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

    return SummaryWriter(str(run_dir / TENSORBOARD_DIR))


def _log_record(run_dir: Path, writer, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["epoch"])
