"""ProPos: Prototype Scattering and Positive Sampling (Huang et al., TPAMI 2022).

BYOL with two extra ingredients and a k-means E-step:
- online network: backbone -> projector -> predictor; target network: backbone -> projector, an
  exponential moving average of the online one (train/ema.py), never touched by the optimiser.
  Projector and predictor: Linear -> BN -> ReLU -> Linear; the predictor's linear layers start
  N(0, 0.01) with zero biases and train at predictor_lr_scale x the learning rate.
- PSA: 2 - 2 cos(predictor(q + sigma * noise), k), symmetric over the two views (q online, k target
  projection of the other view); PSL per direction: per-batch cluster prototypes of one view's q
  against the other view's k, PSL = 0.5 * (PSL(q1, k2) + PSL(q2, k1)), clusters absent from the
  batch at logit -10 (train/losses/propos.py; the official byol_wrapper.py). Loss = PSA +
  psl_weight * PSL; PSL and the noise are off during the first `psl_warmup_epochs` epochs.
- E-step: spherical k-means (train/kmeans.py) of the L2-normalised target projections of the
  whole data set, in eval mode, gives the pseudo-labels PSL looks up by `StepContext.indices`.
  With `resample` (the official CIFAR-20 and ImageNet-Dogs configs) every k-means also sets the
  next epoch's sampling: batches drawn with replacement, each image weighted N / (size of its
  pseudo-cluster), so the clusters are drawn evenly (models/basic_template.py).

Inference uses the TARGET network, the one k-means clusters: `self.backbone` is the target
backbone (what `predict` runs) and `self.projector` the target projector; the online ones are
`online_backbone`, `online_projector` and `predictor`. The k-means centroids are the `centroids`
buffer (K, D), so they are saved in the checkpoint and baked into the export; `head_outputs`
assigns each image to its nearest centroid by cosine.

When the E-step runs: at the end of every epoch (`on_epoch_end`, after its last optimiser step), so the centroids
in each checkpoint, the evaluations and the final clustering match the weights saved with them,
and the labels serve the next epoch; plus once at the start of a process's first epoch (fresh or
resumed run), since pseudo-labels are not saved.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.config import Config, Presets, schedule_point
from train.ema import ema_update, momentum_at
from train.heads import mlp
from train.kmeans import spherical_kmeans
from train.losses.propos import psa_loss, psl_loss
from train.methods.base import ClusteringMethod, EpochContext, StepContext


@dataclass
class ProPosConfig(Config):
    hidden_dim: int = field(default=4096, metadata={"help": "hidden size of the projector and predictor"})
    feature_dim: int = field(default=256, metadata={"help": "projection (and centroid) size"})
    predictor_lr_scale: float = field(default=10.0, metadata={"help": "predictor lr = lr x this"})
    ema_momentum: float = field(default=0.996, metadata={"help": "target network EMA momentum"})
    ema_schedule: str = field(
        default="constant", metadata={"help": "EMA momentum schedule: constant or cosine (to 1 at the end)"}
    )
    noise_sigma: float = field(default=0.001, metadata={"help": "PSA: std of the noise added to q"})
    psl_weight: float = field(default=0.1, metadata={"help": "weight of the prototype scattering loss"})
    psl_temperature: float = field(default=0.5, metadata={"help": "prototype scattering temperature"})
    psl_warmup_epochs: int = field(
        default=50, metadata={**schedule_point(turns_on="PSL"),
                              "help": "first epochs with PSL and the PSA noise off (BYOL only)"}
    )
    kmeans_restarts: int = field(default=10, metadata={"help": "E-step k-means restarts (lowest inertia kept)"})
    kmeans_iters: int = field(default=300, metadata={"help": "E-step k-means iteration cap"})
    kmeans_tol: float = field(
        default=1e-6, metadata={"help": "E-step k-means: stop when the summed squared centroid shift is below"}
    )
    assign_temperature: float = field(
        default=0.1, metadata={"help": "probabilities = softmax(cosine to each centroid / this)"}
    )
    resample: bool = field(
        default=False, metadata={"help": "after every k-means, draw the next epoch's batches class-balanced by "
                                 "pseudo-label, with replacement"}
    )


# Colour jitter 0.4/0.4/0.4/0.1 is s = 0.5 (0.8s/0.8s/0.8s/0.2s). lr 0.05 x 512 / 256.
_PAPER = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=512, schedule="cosine",
              warmup_epochs=50, psl_warmup_epochs=50, epochs=1000, jitter_strength=0.5, jitter_p=0.8,
              gray_p=0.2, normalize=True)
# The official configs (Hzzone/ProPos config/*_propos.yml; values and lines in tests/train/test_presets.py):
# lr 0.05 x the global batch / 256 (basic_template.py), a cosine over `epochs` after the warm-up (so it ends
# at 0.6% of lr, the floor eta_min = 0 unreached), per data set batch, EMA schedule and resampling.
_OFFICIAL = dict(_PAPER, cosine_epochs=1000, lr_min=0.0)
OFFICIAL_DATA = {
    "cifar10": dict(_OFFICIAL, backbone="resnet18", stem="cifar", image_size=32, batch_size=512, lr=0.1,
                    ema_schedule="constant"),
    "cifar100": dict(_OFFICIAL, backbone="resnet18", stem="cifar", image_size=32, batch_size=256, lr=0.05,
                     ema_schedule="cosine", resample=True),
    "imagenet-dogs": dict(_OFFICIAL, backbone="resnet34", stem="imagenet", image_size=224, batch_size=256, lr=0.05,
                          ema_schedule="cosine", resample=True, blur_p=0.5),
}
# Digits (1,797 8x8 images, small CNN): a smaller head, more steps per epoch (batch 128) and a faster
# target (momentum 0.99: only 14 steps per epoch); NMI .85 in about 3.5 CPU-minutes (paper preset).
_DIGITS = dict(hidden_dim=512, feature_dim=128, batch_size=128, lr=0.05, weight_decay=5e-4, ema_momentum=0.99,
               warmup_epochs=5, psl_warmup_epochs=5, eval_every=20, normalize=True)

PRESETS: Presets = {
    "paper": {
        "*": dict(backbone="resnet18", **_PAPER),
        # no official config: CIFAR-10's recipe, ResNet-34 at the data-set defaults' 96 px
        **{d: dict(_OFFICIAL, backbone="resnet34") for d in ("stl10", "imagenet10")},
        **OFFICIAL_DATA,
        "digits": dict(_DIGITS, epochs=60),
    },
    "native": {
        "*": dict(backbone="resnet18", **_PAPER),
        **{d: dict(backbone="resnet34") for d in ("stl10", "imagenet10", "imagenet-dogs")},
        "digits": dict(_DIGITS, epochs=60),
    },
    "fast": {
        "*": dict(backbone="resnet18", **{**_PAPER, "epochs": 20, "warmup_epochs": 2, "psl_warmup_epochs": 2,
                                          "kmeans_restarts": 3, "eval_every": 5}),
        "digits": dict(_DIGITS, epochs=40, kmeans_restarts=3),
    },
}


class ProPos(ClusteringMethod):
    Config = ProPosConfig
    PRESETS = PRESETS

    def __init__(self, cfg: ProPosConfig, in_channels: int, num_clusters: int,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__(cfg, in_channels, num_clusters, mean, std)
        self.online_backbone = self.backbone
        self.online_projector = mlp(self.backbone.out_dim, cfg.hidden_dim, cfg.feature_dim, batch_norm=True)
        self.predictor = mlp(cfg.feature_dim, cfg.hidden_dim, cfg.feature_dim, batch_norm=True)
        for layer in self.predictor.modules():  # the official initialisation (byol_wrapper.py)
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, 0.01)
                nn.init.zeros_(layer.bias)
        # the target starts as a copy of the online network and follows it by EMA only
        self.backbone = copy.deepcopy(self.online_backbone).requires_grad_(False)
        self.projector = copy.deepcopy(self.online_projector).requires_grad_(False)
        self.register_buffer("centroids", torch.zeros(num_clusters, cfg.feature_dim))
        self.pseudo_labels: torch.Tensor | None = None  # (N,) of the last E-step; not saved

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, step: StepContext) -> dict[str, torch.Tensor]:
        """Per view (B, D) each: online projections q1, q2, predictions p1, p2 (of the noised q), target
        projections t1, t2; with PSL on also the batch's pseudo-labels (B,). Kept per view so the gather
        across processes keeps the views apart."""
        cfg = self.cfg
        q = self.online_projector(self.online_backbone(torch.cat([x1, x2])))  # (2B, D)
        with torch.no_grad():
            t1, t2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)
        if not self.psl_on(step):
            p1, p2 = self.predictor(q).chunk(2)
            return {"p1": p1, "p2": p2, "t1": t1, "t2": t2}
        if self.pseudo_labels is None:
            raise RuntimeError("ProPos has no pseudo-labels: on_epoch_start must run before training steps")
        noised = q + cfg.noise_sigma * torch.randn(q.shape, generator=step.generator, device=q.device).to(q.dtype) \
            if cfg.noise_sigma > 0 else q
        p1, p2 = self.predictor(noised).chunk(2)
        q1, q2 = q.chunk(2)
        return {"p1": p1, "p2": p2, "t1": t1, "t2": t2, "q1": q1, "q2": q2, "labels": self.pseudo_labels[step.indices]}

    def loss(self, outputs: dict[str, torch.Tensor], step: StepContext) -> dict[str, torch.Tensor]:
        o = outputs
        psa = psa_loss(torch.cat([o["p1"], o["p2"]]), torch.cat([o["t2"], o["t1"]]))  # each view against the other
        if not self.psl_on(step):
            return {"loss": psa, "psa": psa, "psl": torch.zeros_like(psa)}
        k, t = self.num_clusters, self.cfg.psl_temperature
        psl = 0.5 * (psl_loss(o["q1"], o["t2"], o["labels"], k, t) + psl_loss(o["q2"], o["t1"], o["labels"], k, t))
        return {"loss": psa + self.cfg.psl_weight * psl, "psa": psa, "psl": psl}

    def psl_on(self, step: StepContext) -> bool:
        """PSL and the PSA noise start after `psl_warmup_epochs` epochs of plain BYOL."""
        return step.epoch >= self.cfg.psl_warmup_epochs

    def head_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, F) of the target backbone -> embedding (B, D), probabilities (B, K), cluster (B,).

        probabilities = softmax(cos(embedding, centroid_j) / assign_temperature); cluster = its argmax,
        the nearest centroid.
        """
        embedding = F.normalize(self.projector(features), dim=1)
        similarity = embedding @ self.centroids.to(embedding.dtype).T
        return {
            "embedding": embedding,
            "probabilities": torch.softmax(similarity.float() / self.cfg.assign_temperature, dim=1),
            "cluster": similarity.argmax(1),
        }

    def param_groups(self) -> list[dict[str, Any]]:
        online = [*self.online_backbone.parameters(), *self.online_projector.parameters()]
        return [{"params": online},
                {"params": list(self.predictor.parameters()), "lr_scale": self.cfg.predictor_lr_scale}]

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if self.pseudo_labels is None:  # a process's first epoch (pseudo-labels are not saved)
            self.e_step(ctx)

    def on_epoch_end(self, ctx: EpochContext) -> None:
        self.e_step(ctx)

    def sample_weights(self) -> torch.Tensor | None:
        """With `resample`: weight N / |cluster| per image of the last k-means, so every cluster is drawn
        equally often (the official data_resample); else None."""
        if not self.cfg.resample or self.pseudo_labels is None:
            return None
        sizes = torch.bincount(self.pseudo_labels, minlength=self.num_clusters)
        return self.pseudo_labels.numel() / sizes[self.pseudo_labels].float()

    def on_step_end(self, step: StepContext, outputs: dict[str, torch.Tensor]) -> None:
        total = step.epochs * step.steps_per_epoch
        momentum = momentum_at(self.cfg.ema_momentum, step.step, total, self.cfg.ema_schedule)
        ema_update(self.backbone, self.online_backbone, momentum)
        ema_update(self.projector, self.online_projector, momentum)

    @torch.no_grad()
    def target_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> (B, D) L2-normalised target projections."""
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    @torch.no_grad()
    def e_step(self, ctx: EpochContext) -> None:
        """k-means of the whole data set's target projections -> `centroids` and `pseudo_labels`."""
        result = spherical_kmeans(ctx.map_images(self.target_features), self.num_clusters,
                                  restarts=self.cfg.kmeans_restarts, max_iter=self.cfg.kmeans_iters,
                                  tol=self.cfg.kmeans_tol, generator=ctx.generator)
        self.centroids.copy_(result.centroids)
        self.pseudo_labels = result.labels
