"""The thin base every method file builds on, and the contexts the trainer hands to its hooks.

A method is an nn.Module holding a backbone and its heads (train/methods/README.md is the checklist
for adding one):
- `forward(x1, x2, step)`: two augmented views (B, C, S, S) in [0, 1] -> dict of this process's
  per-sample tensors the loss needs (leading dimension B, or 2B). It runs under DDP; the trainer then
  gathers every tensor across processes (with gradients), so no method has to remember to.
- `loss(outputs, step)`: the gathered outputs -> dict of scalar losses, "loss" being the one to
  minimise. Built from the pure functions in train/losses.
- `head_outputs(features)`: the fixed inference contract that export wraps as is:
  features (B, F) -> {"embedding": (B, D) L2-normalised, "probabilities": (B, K),
  "cluster": (B,) int64, ...the extras `extra_outputs()` declares}. Pure tensor operations, so it
  traces to ONNX.
- State needed at inference (pruning masks, centroids) lives in buffers.
- Hooks: `on_epoch_start` / `on_epoch_end` (whole-data-set work: k-means, pruning),
  `on_step_end(step, outputs)` after every optimiser step (EMA; statistics of the training batches,
  such as CoHiClust's leaf masses): outputs are the step's forward outputs, gathered across
  processes, as `loss` saw them, detached. `EpochContext.map_images` runs the model in eval mode.
  `sample_weights` may ask the trainer for a weighted draw of the next epoch's batches (ProPos's
  class-balanced resampling).
- A method whose loss has an instance part that can train alone sets `instance_pass`: with
  `--instance-splits` its `loss` then sees steps with `step.phase == "instance"` (CC on STL-10).
- A method that fine-tunes another method's trained model names it in `parent` (C3: "cc"); the
  trainer finds and loads that run (train/parents.py) before the first epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from contract.metadata import ExtraOutput
from train.backbones import build_backbone
from train.config import Config, Presets


@dataclass
class StepContext:
    """Where the trainer is: epoch and step counters and the generator for any randomness."""

    epoch: int
    epochs: int
    step: int  # global optimiser step
    steps_per_epoch: int
    generator: torch.Generator
    indices: torch.Tensor  # (B,) data-set indices of this process's batch (ProPos looks up pseudo-labels)
    phase: str = "train"  # "instance": the instance-loss-only pass over the instance splits
    shared_generator: torch.Generator | None = None  # the same stream on every process (None: `generator`)

    # A method takes its random draws through these two, so a test can hand it recorded ones (a subclass).
    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of like's shape, dtype and device, from this process's generator."""
        return torch.randn(like.shape, generator=self.generator, device=like.device).to(like.dtype)

    def permutation(self, n: int, device: torch.device) -> torch.Tensor:
        """A random permutation of range(n), the same on every process (drawn from the shared generator)."""
        generator = self.generator if self.shared_generator is None else self.shared_generator
        return torch.randperm(n, generator=generator, device=device)


@dataclass
class EpochContext:
    """Handed to the epoch hooks: the whole data set (uint8, on the training device) and a mapper."""

    epoch: int
    epochs: int
    images: torch.Tensor  # (N, C, H, W) uint8 training images at the stored side
    generator: torch.Generator
    map_images: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
    """map_images(fn) runs fn on float [0, 1] batches of the whole training data, resized to the model's
    input size (as evaluation sees them: their central crop with test_resized_crop), model in eval mode,
    no grad, and concatenates the results (float32)."""
    run_dir: Path


class ClusteringMethod(nn.Module):
    """Backbone + heads; subclasses implement `forward`, `loss` and `head_outputs`."""

    Config: ClassVar[type[Config]] = Config
    PRESETS: ClassVar[Presets] = {}
    parent: ClassVar[str | None] = None
    """Registry name of the method whose finished run this one starts from (None: trains from scratch)."""
    instance_pass: ClassVar[bool] = False
    """Whether `loss` handles steps of phase "instance" (the instance loss alone), so --instance-splits works."""
    batch_groups: int = 1
    """BatchNorm groups of this process's batch in training (train/batch_norm.py; set by `build_training_model`)."""

    def __init__(self, cfg: Config, in_channels: int, num_clusters: int,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_clusters = num_clusters
        self.backbone = build_backbone(cfg.backbone, cfg.stem, in_channels, mean, std)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, step: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], step: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def head_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_outputs(self) -> tuple[ExtraOutput, ...]:
        """What `head_outputs` gives beyond embedding, probabilities and cluster: name, dtype and shape per
        image of each. Export refuses a head that differs; every later stage passes them on by name."""
        return ()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, S, S) in [0, 1] -> head outputs (see module docstring)."""
        return self.head_outputs(self.backbone(x))

    def some_steps_skip_parameters(self) -> bool:
        """Whether some training steps leave trained parameters without a gradient (a loss term left out, not
        weighted 0: Adam's weight decay would move them). DistributedDataParallel must then look for unused
        parameters at every step, which costs a traversal of the graph, so only such methods ask for it."""
        return False

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; a group may carry "lr_scale" (multiplies the base lr)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def load_parent(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Start from the parent run's weights (called once on a fresh run of a method with a `parent`)."""
        self.load_state_dict(state_dict)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Called before every epoch's first step."""

    def on_epoch_end(self, ctx: EpochContext) -> None:
        """Called after every epoch's last step, before the checkpoint is written."""

    def on_step_end(self, step: StepContext, outputs: dict[str, torch.Tensor]) -> None:
        """Called after every optimiser step of training. outputs: what `forward` returned for this step,
        gathered across processes (the global batch `loss` saw), detached; the losses are the trainer's."""

    def sample_weights(self) -> torch.Tensor | None:
        """Per-image weights (N,) of the training data for drawing the next epoch's batches with
        replacement, or None for a plain permutation. Asked before every epoch's training pass."""
        return None

    def write_artifacts(self, run_dir: Path, outputs: dict[str, torch.Tensor], labels: torch.Tensor | None,
                        images: torch.Tensor) -> dict[str, Any]:
        """Method-specific files for a finished run; returns extra metrics for results.json."""
        return {}

    def cluster_tree(self) -> list[frozenset[int]] | None:
        """The method's own tree over its clusters (CoHiClust): the clusters under each node where two
        surviving subtrees meet, K-1 sets. The merge hierarchy then follows it (train/levels.py); None (the
        default): the clusters are merged on the training embeddings alone."""
        return None
