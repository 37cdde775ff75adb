"""How long a run will take, measured on its first steps, and the command of a run that fits when it is far
too long for the machine.

    projection = Projection(steps_left, steps_per_epoch, device, log, fitting)
    projection.report(*probe_step_seconds(...), "estimated ...")   # before the first step: within a minute
    clock = StepClock(lambda s: projection.report(s, "measured ..."))   # then the first real steps:
    clock.begin(); clock.step_done() ...; clock.epoch_done()            # before a pass, after each step, epoch

A step of a large model on a CPU can take minutes, so the first estimate comes before it: PROBE_IMAGES
images (two views each) forward and backward through a copy of the backbone, more while a pass is quick,
scaled to the batch. Then
the clock times real steps: the first pays one-time costs (allocations, autotuning), so it times the steps
after it until PROBE_STEPS of them or PROBE_SECONDS have passed (the first step alone when it takes that
long by itself), or, when the first epoch ends before that, the epoch as a whole. A run projected beyond
CPU_BUDGET_S on a CPU gets the command of a CPU-sized run: CPU_SIZED's backbone and image size, with
as many epochs as fit in FIT_TARGET_S, estimated from the ratio of the two backbones' FLOPs per image
(the run asked for still goes on).
"""

from __future__ import annotations

import copy
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from contract.cli import option_name
from train.config import Config, option_value

PROBE_IMAGES = 8
PROBE_PASS_SECONDS = 1.0
"""The time probe's pass grows while it takes less than this (train/budget.py probe_step_seconds)."""
PROBE_STEPS = 5
PROBE_SECONDS = 20.0
CPU_BUDGET_S = 2 * 3600
"""A projected run longer than this on a CPU is far beyond what a first run wants."""
FIT_TARGET_S = 10 * 60
CPU_SIZED = dict(backbone="smallcnn", image_size=16)
"""What a CPU trains in minutes: the small conv net at 16 px (docs/clusters.md has what it gives on a folder)."""
MIN_COST_RATIO = 0.005
"""FLOPs understate a small model's time (augmentation, optimiser, Python per step): its cost ratio to the
run's model is taken as at least this. Measured here (bench/first_run.py): a step of the small CNN at 16 px
cost 0.003-0.005 of ResNet-34's at 96 px per image, 6-10x their FLOP ratio (0.0005)."""


@dataclass
class Projection:
    """Prints the run's projected wall time, for each estimate as it comes, and the first time one is far beyond
    a first run on a CPU, the command of a run that fits."""

    steps_left: int  # optimiser steps to the end of the run
    steps_per_epoch: int
    device: torch.device
    log: Callable[[str], None]
    fitting: Callable[[float], tuple[str, float]]  # seconds per epoch -> (command of a CPU-sized run, its seconds)
    advised: bool = False

    def report(self, per_step: float, how: str) -> None:
        seconds = per_step * self.steps_left
        self.log(f"projected: about {duration(seconds)} for the {self.steps_left // self.steps_per_epoch} epochs "
                 f"left ({self.steps_per_epoch} steps each, {per_step:.2f} s per step on {self.device}, {how}; "
                 "evaluations come on top)")
        if self.device.type == "cpu" and seconds > CPU_BUDGET_S and not self.advised:
            self.advised = True
            command, fit_seconds = self.fitting(per_step * self.steps_per_epoch)
            self.log(f"that is far beyond a first run on a CPU. A run sized for it (about {duration(fit_seconds)}): "
                     f"{command}\n(this run goes on; stopped with Ctrl-C, its command started again resumes it)")


def probe_step_seconds(backbone: torch.nn.Module, views: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                       batch_size: int, autocast: Callable[[], Any], sync: Callable[[], None],
                       bn_groups: int = 1) -> tuple[float, int]:
    """(seconds a training step of `batch_size` images would take, images in the pass it is scaled from),
    estimated before the first step: two augmented views (`views`) of PROBE_IMAGES images forward and backward
    through a copy of the backbone (the model's weights and statistics stay as they are), the count growing
    fourfold while a pass takes under PROBE_PASS_SECONDS and the batch is larger: a small model's cost per image
    falls with the batch, a large one's first pass already says enough. Heads and losses are left out (small
    beside the backbone; ProPos's target pass is not: its steps take about a third more). `batch_size` is this
    process's share of the batch; with `bn_groups` BatchNorm groups every pass holds a multiple of them, as the
    training step's passes do."""
    net = copy.deepcopy(backbone).train().requires_grad_(True)  # ProPos's inference backbone is its frozen target
    available = min(batch_size, len(images))

    def fitting(n: int) -> int:
        n = min(n, available)
        return max(bn_groups, n - n % bn_groups)

    def seconds(n: int) -> float:
        with autocast():
            net(views(images[:n]))  # allocations and kernel choices for this size first
        sync()
        began = time.perf_counter()
        with autocast():
            out = net(torch.cat([views(images[:n]), views(images[:n])]))
        out.float().sum().backward()
        sync()
        return time.perf_counter() - began

    count = fitting(PROBE_IMAGES)
    taken = seconds(count)
    while taken < PROBE_PASS_SECONDS and fitting(count * 4) > count:
        count = fitting(count * 4)
        taken = seconds(count)
    return taken * batch_size / count, count


@dataclass
class StepClock:
    """Times the first optimiser steps of a run and reports their seconds per step once, through `measured`."""

    measured: Callable[[float], None]
    sync: Callable[[], None] = lambda: None  # waits for the device (CUDA runs asynchronously)
    _begun: float | None = None
    _first_done: float | None = None
    _steps: int = 0
    done: bool = False

    def begin(self) -> None:
        if self._begun is None:
            self._begun = time.perf_counter()

    def step_done(self) -> None:
        if self.done or self._begun is None:
            return
        self.sync()
        now = time.perf_counter()
        self._steps += 1
        if self._steps == 1:
            self._first_done = now
            if now - self._begun >= PROBE_SECONDS:
                self._report(now - self._begun)
        elif self._steps - 1 >= PROBE_STEPS or now - self._first_done >= PROBE_SECONDS:
            self._report((now - self._first_done) / (self._steps - 1))

    def epoch_done(self) -> None:
        """The first epoch ended before the probe did: its wall time, hooks and all, per step."""
        if not self.done and self._begun is not None and self._steps:
            self._report((time.perf_counter() - self._begun) / self._steps)

    def _report(self, per_step: float) -> None:
        self.done = True
        self.measured(per_step)


def duration(seconds: float) -> str:
    """3725 -> "1 h 2 min"; 95 -> "1 min 35 s"."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def backbone_flops(cfg: Config, in_channels: int, **changes) -> float:
    """FLOPs of one image through cfg's backbone (with `changes`), counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    from train.backbones import build_backbone

    values = {"backbone": cfg.backbone, "stem": cfg.stem, "image_size": cfg.image_size, **changes}
    with torch.device("meta"):
        net = build_backbone(values["backbone"], values["stem"], in_channels).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, in_channels, values["image_size"], values["image_size"], device="meta"))
    return float(counter.get_total_flops())


def fitting_command(cfg: Config, in_channels: int, epoch_seconds: float) -> tuple[str, float]:
    """The command of a CPU-sized run of cfg's method and data (its other command-line choices kept) and its
    projected seconds."""
    ratio = max(MIN_COST_RATIO, backbone_flops(cfg, in_channels, **CPU_SIZED) / backbone_flops(cfg, in_channels))
    seconds = epoch_seconds * ratio
    epochs = max(1, min(cfg.epochs, int(FIT_TARGET_S // seconds)))
    changes = {**CPU_SIZED, "epochs": epochs}
    if cfg.run_dir:
        changes["run_dir"] = f"{cfg.run_dir.rstrip('/')}-cpu"
    return command_line(cfg, changes), epochs * seconds


def command_line(cfg: Config, changes: dict) -> str:
    """`python -m train ...` for cfg with `changes`: the options where cfg differs from its preset (its schedule
    points scaled to its epochs, as the preset gives them) and the changes."""
    from train.methods import make_config

    plan = make_config(cfg.method, dataset=cfg.dataset, preset=cfg.preset)
    scaled = make_config(cfg.method, dataset=cfg.dataset, preset=cfg.preset, epochs=cfg.epochs)
    args = ["python", "-m", "train", "--method", cfg.method, "--dataset", cfg.dataset]
    for f in fields(cfg):
        if f.name in ("method", "dataset") or f.name in changes:
            continue
        value = getattr(cfg, f.name)
        against = {"preset": f.default, "epochs": plan.epochs}.get(f.name, getattr(scaled, f.name))
        if value != against:
            args += [option_name(f.name), option_value(value)]
    for name, value in changes.items():
        args += [option_name(name), option_value(value)]
    return shlex.join(args)
