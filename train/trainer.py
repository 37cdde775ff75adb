"""The training loop every method shares. Read top to bottom: setup, train_one_epoch, evaluate, finish.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from contract import files
from contract.names import (
    CHECKPOINT_FILE,
    CLUSTER_SAMPLES_FILE,
    CLUSTER_STATS_FILE,
    CONFIG_FILE,
    IMAGES_USED_FILE,
    INIT_FILE,
    MAP_POINTS,
    METRICS_FILE,
    PARITY_SAMPLE_FILE,
    RESULTS_FILE,
)
from train import metrics, report
from train.checkpoint import read_checkpoint, save_checkpoint
from train.cluster_stats import cluster_stats
from train.config import Config, split_names
from train.data.augment import AugmentParams, BatchAugment, resize_images
from train.data.cache import FolderDecoder
from train.data.datasets import ImageData, load_dataset, resolve_splits
from train.distributed import ProcessGroup, gather_with_grad, init_from_env
from train.methods import METHODS, get_method
from train.methods.base import ClusteringMethod, EpochContext, StepContext
from train.parents import load_parent, resolve_parent

PARITY_IMAGES = 64
"""Images of the evaluated data saved with the run for export's parity check (evenly spaced)."""
INSTANCE_STREAM = 20_000
"""Random streams of the instance-loss-only pass (its order, then its augmentation per process)."""


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
                size: int, to_cpu: bool = False):
    """fn over float [0, 1] batches of uint8 images resized to size x size, model in eval mode; results concatenated.

    fn returns a tensor or a dict of tensors; floating results come back as float32.
    """
    was_training = model.training
    model.eval()
    parts = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = resize_images(images[start:start + batch_size], size)
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
                    size: int) -> dict[str, torch.Tensor]:
    """Head outputs for every un-augmented image resized to the model's size x size, on the CPU."""
    return map_batches(model, model.predict, images, batch_size, autocast, size, to_cpu=True)


def evaluate(model: ClusteringMethod, data: ImageData, images: torch.Tensor, cfg: Config,
             autocast) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    outputs = predict_dataset(model, images, cfg.eval_batch_size, autocast, cfg.image_size)
    clusters = outputs["cluster"].numpy()
    scores = {"clusters_used": int(np.unique(clusters).size)}
    if data.labels is not None:
        scores.update(metrics.clustering_metrics(data.labels.numpy(), clusters))
    return outputs, scores


def step_losses(model: ClusteringMethod, ddp_model, x1: torch.Tensor, x2: torch.Tensor,
                ctx: StepContext) -> dict[str, torch.Tensor]:
    """One training step's losses: the method's forward (under DDP), its outputs gathered across processes
    with gradients, so every method's loss sees the global batch, then the method's loss."""
    outputs = ddp_model(x1, x2, ctx)
    return model.loss({k: gather_with_grad(v) for k, v in outputs.items()}, ctx)


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


def train_one_epoch(model, ddp_model, optimizer, scheduler, augment: BatchAugment, images: torch.Tensor,
                    cfg: Config, epoch: int, group: ProcessGroup, autocast, *, phase: str = "train",
                    first_step: int = 0, steps_per_epoch: int | None = None,
                    weights: torch.Tensor | None = None) -> dict[str, float]:
    """One pass over `images` (uint8, stored side). phase "train" (the method's loss) or "instance" (the
    instance-loss-only pass); first_step: this pass's first step within the epoch; steps_per_epoch: of all
    the epoch's passes (default: this one's); weights: sampling weights (None: a permutation)."""
    device = images.device
    stream = 0 if phase == "train" else INSTANCE_STREAM
    order_gen = epoch_generator(cfg.seed, epoch, stream, device)   # same on every process
    aug_gen = epoch_generator(cfg.seed, epoch, stream + 1 + group.rank, device)
    steps = epoch_steps(images, cfg)
    per_epoch = steps_per_epoch or steps
    order = epoch_order(images, cfg, order_gen, weights)
    sums: dict[str, float] = {}
    model.train()
    for i in range(steps):
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size][group.rank::group.world_size]
        batch = images[idx]
        x1, x2 = augment(batch, aug_gen), augment(batch, aug_gen)
        if cfg.channels_last and device.type == "cuda":
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(epoch, cfg.epochs, epoch * per_epoch + first_step + i, per_epoch, aug_gen, idx, phase)
        with autocast():
            losses = step_losses(model, ddp_model, x1, x2, ctx)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        model.on_step_end(ctx)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
    return {k: v / max(1, steps) for k, v in sums.items()}


def train(cfg: Config) -> dict[str, Any]:
    """Train (or resume) one run; returns the contents of results.json."""
    method = get_method(cfg.method)
    device = pick_device(cfg.device)
    group = init_from_env(device.type)
    if group.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % group.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the {group.world_size} processes")
    if cfg.init and method.parent is None:
        raise ValueError(f"--init: {cfg.method} starts from no other run (only methods with a parent do)")
    run_dir = cfg.resolved_run_dir()
    log = (lambda msg: print(msg, flush=True)) if group.is_main else (lambda msg: None)
    ckpt_file = run_dir / CHECKPOINT_FILE
    state = read_checkpoint(ckpt_file) if ckpt_file.exists() else None
    # before any data is read: a fresh run of a method with a parent needs that parent run first
    parent_file = resolve_parent(cfg, method.parent, run_dir, log) if method.parent and state is None else None

    if cfg.instance_splits and not method.instance_pass:
        raise ValueError(f"--instance-splits: {cfg.method} has no instance loss to train alone "
                         f"(methods with one: {', '.join(sorted(n for n, m in METHODS.items() if m.instance_pass))})")

    decoder = FolderDecoder(cfg.resolved_cache_dir(), cfg.max_images, cfg.seed, str(device), log=log)
    data = load_run_data(cfg, decoder)  # DoesNotFit before decoding
    for part in {id(d): d for d in (data.train, data.eval, data.instance) if d is not None}.values():
        for skipped in part.skipped:
            log(f"skipped unreadable image {skipped}")
    class_names = data.eval.class_names or data.train.class_names
    num_clusters = cfg.num_clusters or len(class_names or [])
    if num_clusters < 2:
        raise ValueError(f"{cfg.dataset} has no class labels: give --num-clusters")
    for name, part in (("train", data.train), ("instance", data.instance)):
        if part is not None and part.images.shape[0] < cfg.batch_size:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the {name} splits "
                             f"{','.join(part.splits)} ({part.images.shape[0]} images)")
    in_channels = data.train.images.shape[1]
    meta = {"in_channels": in_channels, "num_clusters": num_clusters, "class_names": class_names,
            "dataset": cfg.dataset, "image_size": cfg.image_size, "method": cfg.method}
    mean, std = (cfg.normalization_constants() or channel_stats(data.train.images)) if cfg.normalize else (None, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    if group.is_main:
        used = data.train.sources + (data.instance.sources if data.instance is not None else [])
        files.write_text(run_dir / IMAGES_USED_FILE, "".join(f"{source}\n" for source in used))

    use_amp = cfg.amp and device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    torch.manual_seed(cfg.seed)
    model = method(cfg, in_channels, num_clusters, mean, std)
    images = data.train.images.to(device)
    eval_images = images if data.eval is data.train else data.eval.images.to(device)
    instance_images = None if data.instance is None else data.instance.images.to(device)
    if state is not None:
        if state["method"] != cfg.method:
            raise ValueError(f"{ckpt_file} holds a {state['method']} run, not {cfg.method}: use another --run-dir")
        model.load_state_dict(state["model"])
    model.to(device)
    if parent_file is not None:
        init = load_parent(model, parent_file, cfg, method.parent)
        if group.is_main:
            init["before"] = evaluate(model, data.eval, eval_images, cfg, autocast)[1]
            log(f"{cfg.method}: {method.parent} model {parent_file} (epoch {init['epoch']}) before training: "
                f"{_summary(init['before'])}")
            files.write_json(run_dir / INIT_FILE, init)
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    instance_steps = 0 if instance_images is None else epoch_steps(instance_images, cfg)
    steps_per_epoch = instance_steps + epoch_steps(images, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
    start_epoch, train_seconds = 0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, train_seconds = state["epoch"], state.get("train_seconds", 0.0)
        changed = {k: (v, getattr(cfg, k)) for k, v in state["config"].items()
                   if hasattr(cfg, k) and getattr(cfg, k) != v}
        if changed:
            log("resuming with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        log(f"{run_dir} already finished {start_epoch} epochs: evaluating it again" if start_epoch >= cfg.epochs
            else f"resuming {run_dir} from epoch {start_epoch}/{cfg.epochs}")
    if group.is_main and (state is None or start_epoch < cfg.epochs):  # a finished run keeps its config.json
        cfg.save(run_dir / CONFIG_FILE)
    if group.is_main and not (run_dir / PARITY_SAMPLE_FILE).is_file():  # lets an unfinished run export too
        save_parity_sample(run_dir / PARITY_SAMPLE_FILE, data.eval, cfg.image_size)

    ddp_model = DistributedDataParallel(model) if group.world_size > 1 else model
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)
    augment = BatchAugment(AugmentParams.from_config(cfg))
    writer = _tensorboard(run_dir) if group.is_main else None
    log(f"{cfg.method} on {cfg.dataset}: {_describe_data(data)}, {num_clusters} clusters, {cfg.backbone} "
        f"({cfg.stem} stem) at {cfg.image_size} px, {cfg.epochs} epochs, device {device}"
        + (f" x{group.world_size}" if group.world_size > 1 else ""))

    from tqdm import tqdm  # here, not at the top: bench/train_throughput.py imports this module on bare GPU machines

    bar = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs, desc="epochs",
               disable=not (cfg.progress and group.is_main), dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        ctx = EpochContext(epoch, cfg.epochs, images, epoch_generator(cfg.seed, epoch, 10_000, device),
                           lambda fn: map_batches(model, fn, images, cfg.eval_batch_size, autocast, cfg.image_size),
                           run_dir)
        model.on_epoch_start(ctx)
        losses: dict[str, float] = {}
        if instance_images is not None:  # CC on STL-10: the instance loss alone over the unlabelled split first
            instance = train_one_epoch(model, ddp_model, optimizer, scheduler, augment, instance_images, cfg, epoch,
                                       group, autocast, phase="instance", steps_per_epoch=steps_per_epoch)
            losses.update({f"instance_pass_{k}": v for k, v in instance.items()})
        losses.update(train_one_epoch(model, ddp_model, optimizer, scheduler, augment, images, cfg, epoch, group,
                                      autocast, first_step=instance_steps, steps_per_epoch=steps_per_epoch,
                                      weights=model.sample_weights()))
        model.on_epoch_end(ctx)
        train_seconds += time.perf_counter() - t0
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **losses,
                                  "train_seconds": round(train_seconds, 2)}
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs and group.is_main:
            record.update(evaluate(model, data.eval, eval_images, cfg, autocast)[1])
        if group.is_main:
            save_checkpoint({"method": cfg.method, "config": cfg.to_dict(), "meta": meta, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "epoch": epoch + 1, "train_seconds": train_seconds,
                             "rng": {"torch": torch.get_rng_state()}}, ckpt_file)
            _log_record(run_dir, writer, record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("loss", "nmi", "acc")})
    bar.close()
    results: dict[str, Any] = {}
    if group.is_main:
        results = finish(model, data.eval, eval_images, cfg, run_dir, autocast, train_seconds)
        if writer is not None:
            writer.close()
    return results


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


def finish(model: ClusteringMethod, data: ImageData, images: torch.Tensor, cfg: Config, run_dir: Path,
           autocast, train_seconds: float) -> dict[str, Any]:
    """Final evaluation and the run directory's artefacts."""
    outputs, scores = evaluate(model, data, images, cfg, autocast)
    clusters = outputs["cluster"].numpy()
    labels = data.labels.numpy() if data.labels is not None else None
    confidence = outputs["probabilities"].max(1).values.numpy()
    report.write_assignments(run_dir / "assignments.csv", data.sources, clusters, confidence, labels, data.class_names)
    report.plot_gallery(run_dir / "gallery.png", data.images.numpy(), clusters, seed=cfg.seed,
                        num_clusters=model.num_clusters)
    if labels is not None:
        report.plot_confusion(run_dir / "confusion.png", labels, clusters, data.class_names)
    save_parity_sample(run_dir / PARITY_SAMPLE_FILE, data, cfg.image_size, model)
    save_cluster_stats(run_dir, data, outputs)
    scores.update(model.write_artifacts(run_dir, outputs, data.labels, data.images))
    init_file = run_dir / INIT_FILE
    if get_method(cfg.method).parent and init_file.is_file():
        init = files.read_json(init_file)
        scores.update(init_checkpoint=init["checkpoint"], before=init["before"],
                      after={k: v for k, v in scores.items() if k in ("nmi", "acc", "ari", "clusters_used")})
        print(f"{cfg.method} from {init['checkpoint']}: before {_summary(init['before'])}; "
              f"after {_summary(scores['after'])}", flush=True)
    results = {"finished": True, "method": cfg.method, "dataset": cfg.dataset, "backbone": cfg.backbone,
               "epochs": cfg.epochs, "num_images": int(images.shape[0]), "train_seconds": round(train_seconds, 1),
               "metrics": scores, "skipped_images": data.skipped}
    files.write_json(run_dir / RESULTS_FILE, results)
    print(f"finished {cfg.method} on {cfg.dataset} in {train_seconds:.0f} s: {_summary(scores)}"
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


def save_cluster_stats(run_dir: Path, data: ImageData, outputs: dict[str, torch.Tensor]) -> None:
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


def _summary(scores: dict[str, Any] | None) -> str:
    return "  ".join(f"{k.upper()} {scores[k]:.4f}" for k in ("nmi", "acc", "ari") if k in scores) or "no labels"


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

    return SummaryWriter(str(run_dir / "tensorboard"))


def _log_record(run_dir: Path, writer, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["epoch"])
