"""C3: Cross-instance guided Contrastive Clustering (Sadeghi, Hojjati & Armanfard, 2023), a fine-tuning of CC.

Starts from a trained CC model (same backbone and heads: `parent = "cc"`, loaded by the trainer,
train/parents.py) and freezes its cluster head. The instance head and backbone train with the
zeta-threshold loss: with S = Z Z^T / temperature over the 2N L2-normalised embeddings, the positives
of a sample are itself, its other view and every sample whose cosine similarity exceeds zeta
(train/losses/c3.py). Adam lr 1e-5, batch 128, 20 epochs. The run's results.json reports the metrics
of the CC model before fine-tuning (measured on the initialised model) next to those after, and, as
"before_last_epoch", those after 19 of the 20 epochs: the official code scores before each epoch (main.py
85-89), so that is its last figure (the presets evaluate after every epoch, as it does).

The `paper` preset is the official code (Armanfard-Lab/C3, config/config.yaml): CC's 224 px input
through ResNet-34 with the ImageNet stem; `native` fine-tunes a `native` CC run at the data set's own
resolution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contract.names import METRICS_FILE
from train.config import Presets
from train.losses.c3 import zeta_instance_loss
from train.methods.base import StepContext
from train.methods.cc import CC, JITTER, OFFICIAL_INPUT, CCConfig


@dataclass
class C3Config(CCConfig):
    instance_temperature: float = field(default=1.0, metadata={"help": "temperature of C3's instance loss"})
    zeta: float = field(
        default=0.6, metadata={"help": "cosine similarity above which two samples are also positives"}
    )


# eval_every 1: the official main.py scores before every epoch (85-89), so its last figure is after 19 of the 20
_SCHEDULE = dict(backbone="resnet34", optimizer="adam", lr=1e-5, weight_decay=0.0, batch_size=128, epochs=20,
                 normalize=False, eval_every=1)

PRESETS: Presets = {
    "paper": {"*": _SCHEDULE, **{d: dict(OFFICIAL_INPUT, **jitter) for d, jitter in JITTER.items()}},
    "native": {"*": _SCHEDULE, **JITTER},
    "fast": {
        "*": dict(backbone="resnet18", optimizer="adam", lr=1e-5, batch_size=128, epochs=5, eval_every=0),
        **JITTER,
    },
}


class C3(CC):
    Config = C3Config
    PRESETS = PRESETS
    parent = "cc"

    def __init__(self, cfg: C3Config, in_channels: int, num_clusters: int,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__(cfg, in_channels, num_clusters, mean, std)
        self.cluster_head.requires_grad_(False)  # so param_groups leaves it out of the optimiser

    def train(self, mode: bool = True) -> C3:
        super().train(mode)
        self.cluster_head.eval()  # frozen: no normalisation statistics may move
        return self

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, step: StepContext) -> dict[str, torch.Tensor]:
        # one backbone pass per view, as the official train.py: BatchNorm normalises each view apart
        return {"z1": self.instance_head(self.backbone(x1)), "z2": self.instance_head(self.backbone(x2))}

    def loss(self, outputs: dict[str, torch.Tensor], step: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": zeta_instance_loss(outputs["z1"], outputs["z2"], self.cfg.zeta, self.cfg.instance_temperature)}

    def write_artifacts(self, run_dir: Path, outputs: dict[str, torch.Tensor], labels: torch.Tensor | None,
                        images: torch.Tensor) -> dict[str, Any]:
        """"before_last_epoch": the scores of the evaluation after epochs - 1 epochs (metrics.jsonl, with
        eval_every 1): the official main.py evaluates before each epoch, so its last figure is that one, not the
        score after training (results.json's own, and "after"). Said in the log too."""
        records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()] \
            if (run_dir / METRICS_FILE).is_file() else []
        last = [r for r in records if r["epoch"] == self.cfg.epochs - 1 and "clusters_used" in r]
        if not last:
            return {}
        scores = {k: last[-1][k] for k in ("nmi", "acc", "ari", "clusters_used") if k in last[-1]}
        shown = "  ".join(f"{k.upper()} {v:.4f}" for k, v in scores.items() if k != "clusters_used") or "no labels"
        print(f"c3 after {self.cfg.epochs - 1} of {self.cfg.epochs} epochs, where the official code scores last "
              f"(before each epoch): {shown}", flush=True)
        return {"before_last_epoch": {"epochs": self.cfg.epochs - 1, **scores}}
