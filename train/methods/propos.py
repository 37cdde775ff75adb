"""ProPos: Prototype Scattering and Positive Sampling (Huang et al., TPAMI 2022).

BYOL with two extra ingredients and a k-means E-step:
- online network: backbone -> projector -> predictor; target network: backbone -> projector, an
  exponential moving average of the online one (train/ema.py), never touched by the optimiser.
  Projector and predictor: Linear -> BN -> ReLU -> Linear; the predictor's linear layers start
  N(0, 0.01) with zero biases and train at predictor_lr_scale x the learning rate.
- PSA: 2 - 2 cos(predictor(q + sigma * noise), k), symmetric over the two views (q online, k target
  projection of the other view); PSL per direction: per-batch cluster prototypes of one view's q
  against the other view's k, PSL = 0.5 * (PSL(q1, k2) + PSL(q2, k1)), clusters absent from the
  batch at logit -10 (train/losses/propos.py; the official byol_wrapper.py); with bn_groups > 1 as each
  official device computes it (`psl_loss_per_group`: its own absent clusters, its gradient to its own
  share; so the 4-device recipe's effective PSL weight is psl_weight / 4). Loss = PSA +
  psl_weight * PSL; PSL and the noise are off during the first `psl_warmup_epochs` epochs.
- The step (`forward`) is the official one, v1 or `v2`, with the target's EMA update inside it, and the
  target's BatchNorm on the batch shuffled across the BatchNorm groups (`shuffling_bn`).
- E-step: spherical k-means (train/kmeans.py) of the L2-normalised target projections of the
  whole data set, in eval mode, gives the pseudo-labels PSL looks up by `StepContext.indices`. The
  `paper` presets run it as torch_clustering does on the official 4 processes (10 restarts each: 40,
  seeds 0-39, every restart on all points); the others run their restarts on a sample.
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
from train.distributed import forward_shuffled, world_size
from train.ema import ema_update, momentum_at
from train.heads import mlp
from train.kmeans import INIT_PER_CLUSTER, SAMPLE_PER_CLUSTER, spherical_kmeans
from train.losses.propos import psa_loss, psl_loss_per_group
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
    kmeans_sample_per_cluster: int = field(
        default=SAMPLE_PER_CLUSTER, metadata={"help": "E-step k-means: the restarts run on a random sample of this "
                                              "many points per cluster, then the best is refined on all points "
                                              "(0: every restart seeds and iterates on all points, as "
                                              "torch_clustering)"}
    )
    kmeans_restart_seeds: bool = field(
        default=False, metadata={"help": "E-step k-means: restart i seeds its k-means++ with i at every E-step (as "
                                 "torch_clustering's random_state 0 + i); false: from the epoch's random stream"}
    )
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
    v2: bool = field(
        default=False, metadata={"help": "the official `v2` step (byol_wrapper.py forward_v2): the target's EMA update "
                                 "before the forward pass, both views in one online pass; false: `forward`, one pass "
                                 "per direction and the EMA update after the loss"}
    )
    symmetric: bool = field(
        default=True, metadata={"help": "the loss in both directions (view 1 -> 2 and 2 -> 1), as every official "
                                "config sets; the asymmetric loss is not implemented"}
    )
    shuffling_bn: bool = field(
        default=True, metadata={"help": "the target network's BatchNorm groups see the batch shuffled across them "
                                "(the official `shuffling_bn`: MoCo's shuffled BatchNorm across devices)"}
    )
    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.symmetric:
            raise ValueError("ProPos trains the symmetric loss only (every official config sets symmetric: true)")
        if self.kmeans_sample_per_cluster < 0:
            raise ValueError(f"kmeans_sample_per_cluster must be >= 0 (0: all points), got "
                             f"{self.kmeans_sample_per_cluster}")


# Colour jitter 0.4/0.4/0.4/0.1 is s = 0.5 (0.8s/0.8s/0.8s/0.2s). lr 0.05 x 512 / 256.
_PAPER = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=512, schedule="cosine",
              warmup_epochs=50, psl_warmup_epochs=50, epochs=1000, jitter_strength=0.5, jitter_p=0.8,
              gray_p=0.2, normalize=True)
# The official configs (Hzzone/ProPos config/*_propos.yml; values and lines in tests/train/test_presets.py):
# lr 0.05 x the global batch / 256 (basic_template.py), a cosine over `epochs` after the warm-up (so it ends
# at 0.6% of lr, the floor eta_min = 0 unreached), per data set batch, EMA schedule and resampling.
# Every official config trains on 4 devices without synchronised BatchNorm (num_devices: 4), shuffles the target's
# batch across them and clusters with torch_clustering in distributed mode: 10 restarts on each of the 4
# processes, seeds 0-39, every restart on all points (basic_template.py:486-500, torch_clustering kmeans.py:74-75).
_OFFICIAL = dict(_PAPER, cosine_epochs=1000, lr_min=0.0, bn_groups=4, symmetric=True, shuffling_bn=True,
                 kmeans_restarts=40, kmeans_sample_per_cluster=0, kmeans_restart_seeds=True)
CIFAR10_NORM = dict(normalize_mean="0.4914,0.4822,0.4465", normalize_std="0.2023,0.1994,0.2010")
CIFAR20_NORM = dict(normalize_mean="0.5071,0.4867,0.4408", normalize_std="0.2675,0.2565,0.2761")
IMAGENET_NORM = dict(normalize_mean="0.485,0.456,0.406", normalize_std="0.229,0.224,0.225")
"""basic_template.py:292-309 normalize_params; a data set missing from it (imagenet10, imagenetdogs) gets ImageNet's."""
OFFICIAL_DATA = {
    "cifar10": dict(_OFFICIAL, **CIFAR10_NORM, backbone="resnet18", stem="cifar", image_size=32, batch_size=512,
                    lr=0.1, ema_schedule="constant"),
    "cifar100": dict(_OFFICIAL, **CIFAR20_NORM, backbone="resnet18", stem="cifar", image_size=32, batch_size=256,
                     lr=0.05, ema_schedule="cosine", resample=True, v2=True),
    "imagenet-dogs": dict(_OFFICIAL, **IMAGENET_NORM, backbone="resnet34", stem="imagenet", image_size=224,
                          batch_size=256, lr=0.05, ema_schedule="cosine", resample=True, blur_p=0.5, v2=True,
                          test_resized_crop=True),
}
# Digits (1,797 8x8 images, small CNN): a smaller head, more steps per epoch (batch 128) and a faster
# target (momentum 0.99: only 14 steps per epoch); NMI .85 in about 3.5 CPU-minutes (paper preset).
_DIGITS = dict(hidden_dim=512, feature_dim=128, batch_size=128, lr=0.05, weight_decay=5e-4, ema_momentum=0.99,
               warmup_epochs=5, psl_warmup_epochs=5, eval_every=20, normalize=True)

PRESETS: Presets = {
    "paper": {
        "*": dict(backbone="resnet18", **_PAPER),
        # no official config: CIFAR-10's recipe, ResNet-34 at the data-set defaults' 96 px, ImageNet's constants
        **{d: dict(_OFFICIAL, **IMAGENET_NORM, backbone="resnet34") for d in ("stl10", "imagenet10")},
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


def interleave(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, ...), (B, ...) -> (2B, ...): group by group of `groups` equal slices, a's slice then b's."""
    return torch.stack([a.unflatten(0, (groups, -1)), b.unflatten(0, (groups, -1))], 1).flatten(0, 2)


def deinterleave(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `interleave`: (2B, ...) -> (B, ...), (B, ...)."""
    pairs = x.unflatten(0, (groups, 2, -1))
    return pairs[:, 0].flatten(0, 1), pairs[:, 1].flatten(0, 1)


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
        """Per view (B, D) each: predictions p1, p2 (of the online projections, noised once PSL is on), target
        projections t1, t2; with PSL on also the online projections q1, q2 and the batch's pseudo-labels (B,).
        Kept per view so the gather across processes keeps the views apart.

        The official step (byol_wrapper.py): without `v2` (`forward`, symmetric) one direction after the other,
        the online network on one view alone and the target on the other alone (view 1 -> 2, then 2 -> 1: so
        the BatchNorm statistics move in that order), then the target's EMA update, before backward, from the
        online weights this step starts from; with `v2` (`forward_v2`) the EMA update first, then one online
        pass over both views and one target pass over both, views swapped. The target's batch is shuffled
        across the BatchNorm groups of all processes with `shuffling_bn`.
        """
        if self.psl_on(step) and self.pseudo_labels is None:
            raise RuntimeError("ProPos has no pseudo-labels: on_epoch_start must run before training steps")
        if self.cfg.v2:
            self.update_target(step)
            outputs = self.both_views_at_once(x1, x2, step)
        else:
            outputs = {}
            for a, b, xa, xb in (("1", "2", x1, x2), ("2", "1", x2, x1)):
                q = self.online_projector(self.online_backbone(xa))
                outputs[f"t{b}"] = self.target_projections(xb, step)
                outputs[f"p{a}"] = self.predictor(self.noised(q, step))
                outputs[f"q{a}"] = q
            self.update_target(step)
        if not self.psl_on(step):
            return {k: v for k, v in outputs.items() if not k.startswith("q")}
        return {**outputs, "labels": self.pseudo_labels[step.indices]}

    def both_views_at_once(self, x1: torch.Tensor, x2: torch.Tensor, step: StepContext) -> dict[str, torch.Tensor]:
        """The `v2` passes: online over [view 1; view 2], target over [view 2; view 1], predictor over the noised
        online projections; each BatchNorm group holds both views of its images (as each official device held
        both views of its share), so the views are interleaved group by group."""
        groups = self.batch_groups
        q1, q2 = deinterleave(self.online_projector(self.online_backbone(interleave(x1, x2, groups))), groups)
        t2, t1 = deinterleave(self.target_projections(interleave(x2, x1, groups), step), groups)
        noised = self.noised(torch.cat([q1, q2]), step).chunk(2)
        p1, p2 = deinterleave(self.predictor(interleave(*noised, groups)), groups)
        return {"p1": p1, "p2": p2, "t1": t1, "t2": t2, "q1": q1, "q2": q2}

    def noised(self, q: torch.Tensor, step: StepContext) -> torch.Tensor:
        """PSA's q + sigma * noise once PSL is on; q itself during the warm-up."""
        if not self.psl_on(step) or self.cfg.noise_sigma == 0:
            return q
        return q + self.cfg.noise_sigma * step.normal(q)

    @torch.no_grad()
    def target_projections(self, x: torch.Tensor, step: StepContext) -> torch.Tensor:
        """(B, C, S, S) -> (B, D) target projections; with `shuffling_bn` computed on the global batch shuffled
        (the permutation drawn from the step, the same on every process)."""
        def target(images: torch.Tensor) -> torch.Tensor:
            return self.projector(self.backbone(images))

        if not self.cfg.shuffling_bn:
            return target(x)
        return forward_shuffled(target, x, step.permutation(x.shape[0] * world_size(), x.device))

    @torch.no_grad()
    def update_target(self, step: StepContext) -> None:
        """target <- EMA of the online network, at the momentum of this step (the official n_iter counts from 1)."""
        total = step.epochs * step.steps_per_epoch
        momentum = momentum_at(self.cfg.ema_momentum, step.step + 1, total, self.cfg.ema_schedule)
        ema_update(self.backbone, self.online_backbone, momentum)
        ema_update(self.projector, self.online_projector, momentum)

    def loss(self, outputs: dict[str, torch.Tensor], step: StepContext) -> dict[str, torch.Tensor]:
        o = outputs
        psa = psa_loss(torch.cat([o["p1"], o["p2"]]), torch.cat([o["t2"], o["t1"]]))  # each view against the other
        if not self.psl_on(step):
            return {"loss": psa, "psa": psa, "psl": torch.zeros_like(psa)}
        k, t, groups = self.num_clusters, self.cfg.psl_temperature, self.cfg.bn_groups
        psl = 0.5 * (psl_loss_per_group(o["q1"], o["t2"], o["labels"], k, t, groups)
                     + psl_loss_per_group(o["q2"], o["t1"], o["labels"], k, t, groups))
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

    @torch.no_grad()
    def target_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> (B, D) L2-normalised target projections."""
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    @torch.no_grad()
    def e_step(self, ctx: EpochContext) -> None:
        """k-means of the whole data set's target projections -> `centroids` and `pseudo_labels`."""
        cfg = self.cfg
        sample = cfg.kmeans_sample_per_cluster or None
        result = spherical_kmeans(ctx.map_images(self.target_features), self.num_clusters,
                                  restarts=cfg.kmeans_restarts, max_iter=cfg.kmeans_iters, tol=cfg.kmeans_tol,
                                  generator=ctx.generator, sample_per_cluster=sample,
                                  init_per_cluster=INIT_PER_CLUSTER if sample else None,
                                  restart_seeds=range(cfg.kmeans_restarts) if cfg.kmeans_restart_seeds else None)
        self.centroids.copy_(result.centroids)
        self.pseudo_labels = result.labels
