"""CC: Contrastive Clustering (Li et al., AAAI 2021).

Instance head 512 -> 512 -> ReLU -> 128 (NT-Xent over the 2N embeddings, temperature 0.5) and
cluster head 512 -> 512 -> ReLU -> M -> softmax (NT-Xent over the 2M cluster columns,
temperature 1.0, plus log M - H per view). Loss = instance + cluster; in an instance pass (STL-10's
unlabelled split, `--instance-splits`) the instance loss alone, the cluster head left out (no gradient:
Adam leaves it untouched, as train_STL10.py). One backbone pass per view, as the official code.

Presets: `paper` is the official code (Yunfan-Li/Contrastive-Clustering): every data set at 224 px
through ResNet-34 with the ImageNet stem, and STL-10's two-phase epoch; `native` the project's faster
recipe at the data set's own resolution with the CIFAR stem; `fast` a short schedule. Each official
value and its source line: tests/train/test_presets.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from train.config import ARCHITECTURE, Config, Presets
from train.heads import cluster_head, mlp
from train.losses.cc import cluster_contrastive_loss
from train.losses.contrastive import nt_xent
from train.methods.base import ClusteringMethod, StepContext


@dataclass
class CCConfig(Config):
    instance_temperature: float = field(default=0.5, metadata={"help": "instance NT-Xent temperature"})
    cluster_temperature: float = field(default=1.0, metadata={"help": "cluster NT-Xent temperature"})
    feature_dim: int = field(default=128, metadata={**ARCHITECTURE, "help": "instance embedding size"})
    hidden_dim: int = field(default=512, metadata={**ARCHITECTURE, "help": "hidden size of both heads"})


WEAK_JITTER = ("cifar10", "cifar100", "tiny-imagenet")
STRONG_JITTER = ("stl10", "imagenet10", "imagenet-dogs")
JITTER = {**{d: dict(jitter_strength=0.5) for d in WEAK_JITTER},
          **{d: dict(jitter_strength=1.0) for d in STRONG_JITTER}}
"""Colour jitter s per data set (official train.py: s=0.5 for CIFAR and Tiny-ImageNet, the default 1.0 else)."""
OFFICIAL_INPUT = dict(backbone="resnet34", stem="imagenet", image_size=224)
"""CC's official code trains every data set at 224 px, ResNet-34 with the ImageNet stem (7x7/2 + max-pool)."""
OFFICIAL_DATA = {
    **{d: dict(OFFICIAL_INPUT, **JITTER[d]) for d in WEAK_JITTER},
    "stl10": dict(OFFICIAL_INPUT, **JITTER["stl10"], train_splits="train,test", instance_splits="unlabelled"),
    **{d: dict(OFFICIAL_INPUT, **JITTER[d], blur_p=0.5) for d in ("imagenet10", "imagenet-dogs")},
}
"""The per-data-set part of CC's paper preset (C3 and DRC train at CC's resolution too)."""
_SCHEDULE = dict(backbone="resnet34", optimizer="adam", lr=3e-4, weight_decay=0.0, batch_size=256, epochs=1000,
                 normalize=False)
_DIGITS = dict(epochs=300, eval_every=50)

PRESETS: Presets = {
    "paper": {"*": _SCHEDULE, **OFFICIAL_DATA, "digits": _DIGITS},
    "native": {"*": _SCHEDULE, **JITTER, "digits": _DIGITS},
    "fast": {
        "*": dict(backbone="resnet18", optimizer="adam", lr=3e-4, batch_size=256, epochs=20, eval_every=5),
        **JITTER,
        "digits": dict(epochs=60, eval_every=20),
    },
}


class CC(ClusteringMethod):
    Config = CCConfig
    PRESETS = PRESETS
    instance_pass = True

    def __init__(self, cfg: CCConfig, in_channels: int, num_clusters: int,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__(cfg, in_channels, num_clusters, mean, std)
        dim = self.backbone.out_dim
        self.instance_head = mlp(dim, cfg.hidden_dim, cfg.feature_dim)
        self.cluster_head = cluster_head(dim, cfg.hidden_dim, num_clusters)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, step: StepContext) -> dict[str, torch.Tensor]:
        # one backbone pass per view, as the official Network.forward: BatchNorm normalises each view apart
        h1, h2 = self.backbone(x1), self.backbone(x2)
        outputs = {"z1": self.instance_head(h1), "z2": self.instance_head(h2)}
        if step.phase != "instance":  # the instance pass leaves the cluster head out (no gradient, as official)
            outputs.update(p1=self.cluster_head(h1), p2=self.cluster_head(h2))
        return outputs

    def loss(self, outputs: dict[str, torch.Tensor], step: StepContext) -> dict[str, torch.Tensor]:
        instance = nt_xent(outputs["z1"], outputs["z2"], self.cfg.instance_temperature)
        if step.phase == "instance":
            return {"loss": instance, "instance": instance}
        cluster = cluster_contrastive_loss(outputs["p1"], outputs["p2"], self.cfg.cluster_temperature)
        return {"loss": instance + cluster, "instance": instance, "cluster": cluster}

    def some_steps_skip_parameters(self) -> bool:
        return bool(self.cfg.instance_splits)  # the instance pass trains no cluster head

    def head_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = self.cluster_head(features)
        return {
            "embedding": F.normalize(self.instance_head(features), dim=1),
            "probabilities": probabilities,
            "cluster": probabilities.argmax(1),
        }
