"""CC: Contrastive Clustering (Li et al., AAAI 2021).

Instance head 512 -> 512 -> ReLU -> 128 (NT-Xent over the 2N embeddings, temperature 0.5) and
cluster head 512 -> 512 -> ReLU -> M -> softmax (NT-Xent over the 2M cluster columns,
temperature 1.0, plus log M - H per view). Loss = instance + cluster.
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

PRESETS: Presets = {
    "paper": {
        "*": dict(backbone="resnet34", optimizer="adam", lr=3e-4, weight_decay=0.0, batch_size=256,
                  epochs=1000, normalize=False),
        **{d: dict(jitter_strength=0.5) for d in WEAK_JITTER},
        **{d: dict(jitter_strength=1.0) for d in STRONG_JITTER},
        "digits": dict(epochs=300, eval_every=50),
    },
    "fast": {
        "*": dict(backbone="resnet18", optimizer="adam", lr=3e-4, batch_size=256, epochs=20, eval_every=5),
        **{d: dict(jitter_strength=0.5) for d in WEAK_JITTER},
        **{d: dict(jitter_strength=1.0) for d in STRONG_JITTER},
        "digits": dict(epochs=60, eval_every=20),
    },
}


class CC(ClusteringMethod):
    Config = CCConfig
    PRESETS = PRESETS

    def __init__(self, cfg: CCConfig, in_channels: int, num_clusters: int,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__(cfg, in_channels, num_clusters, mean, std)
        dim = self.backbone.out_dim
        self.instance_head = mlp(dim, cfg.hidden_dim, cfg.feature_dim)
        self.cluster_head = cluster_head(dim, cfg.hidden_dim, num_clusters)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, step: StepContext) -> dict[str, torch.Tensor]:
        h = self.backbone(torch.cat([x1, x2]))
        z1, z2 = self.instance_head(h).chunk(2)
        p1, p2 = self.cluster_head(h).chunk(2)
        return {"z1": z1, "z2": z2, "p1": p1, "p2": p2}

    def loss(self, outputs: dict[str, torch.Tensor], step: StepContext) -> dict[str, torch.Tensor]:
        instance = nt_xent(outputs["z1"], outputs["z2"], self.cfg.instance_temperature)
        cluster = cluster_contrastive_loss(outputs["p1"], outputs["p2"], self.cfg.cluster_temperature)
        return {"loss": instance + cluster, "instance": instance, "cluster": cluster}

    def head_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = self.cluster_head(features)
        return {
            "embedding": F.normalize(self.instance_head(features), dim=1),
            "probabilities": probabilities,
            "cluster": probabilities.argmax(1),
        }
