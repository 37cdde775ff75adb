"""CoHiClust: Contrastive Hierarchical Clustering (Znalezniak et al., ECML PKDD 2023).

Projection head 512 (BN, ReLU) -> 128 trained with SimCLR's NT-Xent (temperature 0.5), and a tree
head Linear(d -> 2^L - 1) + sigmoid: a soft binary tree of depth L whose node probabilities are
products along the paths (train/losses/cohiclust.py). Loss = SimCLR alone for the first `simclr_epochs`
(the tree head left out: no gradient, untouched), then SimCLR + tree loss + 2^-L x balance regulariser.
The projection head's first Linear has no bias (official model.py:36); each view passes through the model
on its own. From epoch `prune_start_epoch` (counted from 1)
on, the end of each epoch removes the surviving leaf with the smallest mass, until 2^L - prune =
num_clusters leaves are left. As in the official code (tree_losses.py, main.py), the mass of a leaf is
the epoch's mean of its masked probability over the training batches (both augmented views, train
mode), and pruning masks the leaves only: internal nodes keep their probabilities in the losses even
when every leaf below them is gone. A run shorter than the schedule prunes what is left at the end
of its last epoch (one that ends within the SimCLR-only epochs by the leaf masses of the whole training
data, since no training batch gave any), so a finished model always has num_clusters leaves. The
surviving leaves are the `leaf_mask` buffer (saved and exported).

The `paper` preset is the official code per data set (cfg/<data set>.yaml, main.py, utils.py; each
value with its source line in tests/train/test_presets.py): CIFAR on its train split with ResNet-50
and the CIFAR stem at 32 px, evaluated on the test split; STL-10 trained on its unlabelled split,
ResNet-34 with the ImageNet stem at 96 px; ImageNet-10 ResNet-50 and Dogs ResNet-34, ImageNet stem,
224 px. `native` is the project's earlier recipe; `fast` a short schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract.files import write_json
from contract.metadata import ExtraOutput
from contract.names import TREE_FILE
from train import report
from train.config import ARCHITECTURE, Config, Presets, schedule_point
from train.heads import mlp
from train.losses.cohiclust import (
    leaf_level_mask,
    level_slice,
    node_mask_from_leaves,
    node_probabilities,
    tree_loss,
    tree_regularizer,
)
from train.losses.contrastive import nt_xent
from train.methods.base import ClusteringMethod, EpochContext, StepContext
from train.metrics import clustering_metrics

PATH = "path"
"""The extra head output: per image, the heap ids of its cluster's leaf and its ancestors (B, L) int64."""


@dataclass
class CoHiClustConfig(Config):
    temperature: float = field(default=0.5, metadata={"help": "SimCLR NT-Xent temperature"})
    feature_dim: int = field(default=128, metadata={**ARCHITECTURE, "help": "projection (SimCLR embedding) size"})
    hidden_dim: int = field(default=512, metadata={**ARCHITECTURE, "help": "hidden size of the projection head"})
    depth: int = field(default=4, metadata={**ARCHITECTURE, "help": "tree depth L: 2^L leaves before pruning"})
    prune: int = field(
        default=6, metadata={"help": "leaves to prune (one per epoch); 2^depth - prune must equal num_clusters"}
    )
    simclr_epochs: int = field(default=1000, metadata={**schedule_point(turns_on="the tree loss"),
                                                        "help": "first epochs trained with the SimCLR loss only"})
    prune_start_epoch: int = field(
        default=1051, metadata={**schedule_point(round_up=True), "help": "epoch (counted from 1) at whose end the "
                                "first leaf is pruned, one more at the end of each epoch after it"}
    )
    self_pairs_negative: bool = field(
        default=True, metadata={"help": "tree loss counts the pairs (i, i) as negatives, as the reference code"}
    )


_SCHEDULE = dict(optimizer="adam", lr=1e-3, weight_decay=1e-6, batch_size=512, epochs=1500, simclr_epochs=1000,
                 prune_start_epoch=1051, depth=4, prune=6)
_AUGMENT = dict(jitter_strength=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.0, normalize=True)
_CIFAR = dict(_AUGMENT, backbone="resnet50", stem="cifar", image_size=32, train_splits="train", eval_splits="test")
_CIFAR10_MEAN = "0.4914,0.4822,0.4465"
_IMAGENET_NORM = dict(normalize_mean="0.485,0.456,0.406", normalize_std="0.229,0.224,0.225")
OFFICIAL_DATA = {
    "cifar10": dict(_CIFAR, normalize_mean=_CIFAR10_MEAN, normalize_std="0.2023,0.1994,0.2010"),
    "cifar100": dict(_CIFAR, depth=5, prune=12, normalize_mean="0.5071,0.4865,0.4409",
                     normalize_std="0.2673,0.2564,0.2762"),
    # STL-10 is standardised with CIFAR-10's mean and its own std, as utils.py writes it
    "stl10": dict(_AUGMENT, backbone="resnet34", stem="imagenet", image_size=96, train_splits="unlabelled",
                  eval_splits="test", normalize_mean=_CIFAR10_MEAN, normalize_std="0.2471,0.2435,0.2616"),
    "imagenet10": dict(_AUGMENT, **_IMAGENET_NORM, backbone="resnet50", stem="imagenet", image_size=224,
                       batch_size=128),
    "imagenet-dogs": dict(_AUGMENT, **_IMAGENET_NORM, backbone="resnet34", stem="imagenet", image_size=224,
                          batch_size=128, prune=1),
}
"""The official cfg/<data set>.yaml and utils.py (its Normalize constants included), per data set."""
# Tuned (no figure in the paper): the tree loss from the start, 60 epochs on all 16 leaves. Batch 128: 14 steps
# an epoch on the 1797 digits (7 at 256), enough for a tree that starts after SimCLR-only epochs to catch up
# (--simclr-epochs 40 --prune-start-epoch 60 --epochs 80, 3 seeds: NMI 0.806 against 0.826 without them; at 256
# 0.639 against 0.761, its 40 tree epochs of 7 steps too few; docs/methods.md).
_DIGITS = dict(backbone="smallcnn", batch_size=128, epochs=90, simclr_epochs=0, prune_start_epoch=60, eval_every=30)

PRESETS: Presets = {
    "paper": {"*": dict(backbone="resnet50", **_SCHEDULE), **OFFICIAL_DATA, "digits": _DIGITS},
    "native": {
        "*": dict(backbone="resnet50", **_SCHEDULE),
        "cifar100": dict(depth=5, prune=12),
        "stl10": dict(backbone="resnet34"),
        "imagenet10": dict(backbone="resnet34", batch_size=128),
        "imagenet-dogs": dict(backbone="resnet34", batch_size=128, image_size=224, stem="imagenet", prune=1),
        "digits": _DIGITS,
    },
    "fast": {
        "*": dict(backbone="resnet18", optimizer="adam", lr=1e-3, weight_decay=1e-6, batch_size=256, epochs=45,
                  simclr_epochs=30, prune_start_epoch=31, depth=4, prune=6, eval_every=15),
        "cifar100": dict(depth=5, prune=12),
        "imagenet-dogs": dict(prune=1),
        "digits": dict(backbone="smallcnn", epochs=45, simclr_epochs=0, prune_start_epoch=30, eval_every=15),
    },
}


def _check_tree(cfg: CoHiClustConfig, num_clusters: int) -> None:
    if cfg.depth < 1:
        raise ValueError(f"depth must be >= 1, got {cfg.depth}")
    if not 0 <= cfg.prune < 2 ** (cfg.depth - 1):
        raise ValueError(f"prune must be in [0, 2^depth / 2) = [0, {2 ** (cfg.depth - 1)}), got {cfg.prune}")
    if 2**cfg.depth - cfg.prune != num_clusters:
        depth = max(1, math.ceil(math.log2(num_clusters)))
        raise ValueError(f"depth {cfg.depth} and prune {cfg.prune} keep {2 ** cfg.depth - cfg.prune} leaves, "
                         f"not the {num_clusters} clusters asked for; for example --depth {depth} "
                         f"--prune {2 ** depth - num_clusters}")
    if cfg.simclr_epochs < 0:
        raise ValueError(f"simclr_epochs must be >= 0, got {cfg.simclr_epochs}")
    if cfg.prune_start_epoch <= cfg.simclr_epochs:
        raise ValueError(f"prune_start_epoch ({cfg.prune_start_epoch}) must come after the "
                         f"{cfg.simclr_epochs} SimCLR-only epochs: the tree is untrained before")
    if cfg.prune_start_epoch < 1:
        raise ValueError(f"prune_start_epoch counts from 1, got {cfg.prune_start_epoch}")


class CoHiClust(ClusteringMethod):
    Config = CoHiClustConfig
    PRESETS = PRESETS

    def __init__(self, cfg: CoHiClustConfig, in_channels: int, num_clusters: int,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        _check_tree(cfg, num_clusters)
        super().__init__(cfg, in_channels, num_clusters, mean, std)
        dim = self.backbone.out_dim
        self.depth = cfg.depth
        # no bias before the BatchNorm, as the official model.py:36 (a bias there would shift its running mean)
        self.projection_head = mlp(dim, cfg.hidden_dim, cfg.feature_dim, batch_norm=True, first_bias=False)
        self.tree_head = nn.Sequential(nn.Linear(dim, 2**cfg.depth - 1), nn.Sigmoid())
        self.register_buffer("leaf_mask", torch.ones(2**cfg.depth, dtype=torch.bool))
        # this epoch's sum over training batches of the batch-mean masked leaf probabilities, and the batch count:
        # the pruning statistic, reset at every epoch's start (a resumed run repeats its unfinished epoch)
        self.epoch_leaf_mass = torch.zeros(2**cfg.depth)
        self.epoch_batches = 0

    def node_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, 2^(L+1) - 1) unmasked node probabilities, heap order."""
        return node_probabilities(self.tree_head(features).float())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, step: StepContext) -> dict[str, torch.Tensor]:
        """z1, z2 (B, feature_dim) projections; after the SimCLR-only epochs also p1, p2 (B, 2^(L+1) - 1) node
        probabilities. One pass of the whole model per view, as the official main.py (net(pos_1), net(pos_2)):
        BatchNorm normalises each view apart."""
        h1, h2 = self.backbone(x1), self.backbone(x2)
        outputs = {"z1": self.projection_head(h1), "z2": self.projection_head(h2)}
        if self.tree_on(step):
            outputs.update(p1=self.node_probabilities(h1), p2=self.node_probabilities(h2))
        return outputs

    def tree_on(self, step: StepContext) -> bool:
        """The tree head trains after the SimCLR-only epochs. Before, the loss leaves it out altogether (as the
        official main.py): with no gradient Adam leaves it untouched, where a gradient of 0 would let the
        weight decay, normalised by Adam, drive its weights to 0 and the tree to a uniform split it cannot
        leave."""
        return step.epoch >= self.cfg.simclr_epochs

    def some_steps_skip_parameters(self) -> bool:
        return self.cfg.simclr_epochs > 0

    def loss(self, outputs: dict[str, torch.Tensor], step: StepContext) -> dict[str, torch.Tensor]:
        simclr = nt_xent(outputs["z1"], outputs["z2"], self.cfg.temperature)
        if not self.tree_on(step):
            return {"loss": simclr, "simclr": simclr}
        p1, p2 = outputs["p1"], outputs["p2"]
        node_mask = leaf_level_mask(self.leaf_mask)
        tree = tree_loss(p1, p2, node_mask, self.cfg.self_pairs_negative)
        balance = tree_regularizer(torch.cat([p1, p2]), node_mask)
        loss = simclr + tree + 2.0**-self.depth * balance
        return {"loss": loss, "simclr": simclr, "tree": tree, "regularizer": balance}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "projection_head.0.bias" in state_dict:
            raise ValueError("a CoHiClust checkpoint of an earlier version of this project: its projection head's "
                             "first Linear has a bias, which the model no longer has (none in the official "
                             "model.py:36, so BatchNorm's running mean is the official one); train the run again")
        return super().load_state_dict(state_dict, strict, assign)

    def head_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, F) -> embedding (B, 128), probabilities (B, K) over the K surviving leaves
        (heap order, renormalised to sum to 1), cluster (B,) in [0, K), path (B, L) heap ids of the
        cluster's leaf and its ancestors, level 1 to L."""
        leaves = self.node_probabilities(features)[:, level_slice(self.depth)]
        survivors = self.leaf_mask.nonzero().squeeze(1)  # (K,) leaf indices; cluster c is leaf survivors[c]
        kept = leaves.index_select(1, survivors)
        probabilities = kept / kept.sum(1, keepdim=True).clamp_min(1e-12)
        cluster = probabilities.argmax(1)
        leaf_heap_id = survivors[cluster] + 2**self.depth - 1
        shifts = torch.arange(self.depth - 1, -1, -1, device=features.device)
        path = torch.div(leaf_heap_id.unsqueeze(1) + 1, 2**shifts, rounding_mode="floor") - 1
        return {
            "embedding": F.normalize(self.projection_head(features), dim=1),
            "probabilities": probabilities,
            "cluster": cluster,
            PATH: path,
        }

    def cluster_tree(self) -> list[frozenset[int]]:
        """The clusters under each node of the pruned tree with two surviving subtrees (K-1 sets, deepest
        first); cluster c is the c-th surviving leaf in heap order, as in `head_outputs`."""
        leaves = self.leaf_mask.nonzero().squeeze(1).tolist()  # leaf positions within the last level
        groups: list[frozenset[int]] = []
        for level in range(self.depth - 1, -1, -1):
            under: dict[int, set[int]] = {}
            for c, leaf in enumerate(leaves):
                under.setdefault(leaf >> (self.depth - level), set()).add(c)
            groups += [g for g in map(frozenset, under.values()) if len(g) > 1 and g not in groups]
        return groups

    def extra_outputs(self) -> tuple[ExtraOutput, ...]:
        return (ExtraOutput(PATH, "int64", (self.depth,), "tree node ids (heap order) of the cluster's leaf and "
                            "its ancestors, level 1 to L"),)

    @torch.no_grad()
    def on_step_end(self, step: StepContext, outputs: dict[str, torch.Tensor]) -> None:
        """Add the training batch's mean masked leaf probabilities to the epoch's pruning statistic.

        outputs["p1"], ["p2"]: (B, 2^(L+1) - 1) node probabilities of the two views, gathered (official:
        tree_losses.py accumulates the mean of the masked leaf level of every batch)."""
        if "p1" not in outputs:  # a SimCLR-only step: no tree (and no pruning before the tree trains)
            return
        leaves = torch.cat([outputs["p1"], outputs["p2"]])[:, level_slice(self.depth)].float() * self.leaf_mask
        self.epoch_leaf_mass = self.epoch_leaf_mass.to(leaves.device) + leaves.mean(0)
        self.epoch_batches += 1

    def pruned_after(self, epoch: int, epochs: int) -> int:
        """How many leaves are gone once the end of (0-based) `epoch` has pruned: one per epoch from
        prune_start_epoch (counted from 1) on, and all of them at the end of the run's last epoch."""
        if epoch == epochs - 1:
            return self.cfg.prune
        return min(self.cfg.prune, max(0, epoch + 2 - self.cfg.prune_start_epoch))

    @torch.no_grad()
    def prune_smallest(self, leaf_mass: torch.Tensor, count: int) -> None:
        """Remove the `count` surviving leaves with the smallest mass; leaf_mass: (2^L,)."""
        mass = leaf_mass.float().masked_fill(~self.leaf_mask, float("inf"))
        self.leaf_mask[mass.topk(count, largest=False).indices] = False

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self.epoch_leaf_mass = torch.zeros_like(self.epoch_leaf_mass)
        self.epoch_batches = 0

    def on_epoch_end(self, ctx: EpochContext) -> None:
        missing = self.pruned_after(ctx.epoch, ctx.epochs) - int((~self.leaf_mask).sum())
        if missing <= 0:
            return
        mass = self.epoch_leaf_mass / self.epoch_batches if self.epoch_batches else self.data_leaf_mass(ctx)
        self.prune_smallest(mass, missing)

    def data_leaf_mass(self, ctx: EpochContext) -> torch.Tensor:
        """(2^L,) mean masked leaf probability over the training data in evaluation mode: the pruning statistic
        of a run that ends within its SimCLR-only epochs (no training batch gave one; the tree is untrained),
        so that a finished model still has num_clusters leaves."""
        leaves = ctx.map_images(lambda x: self.node_probabilities(self.backbone(x))[:, level_slice(self.depth)])
        return (leaves.to(self.leaf_mask.device) * self.leaf_mask).mean(0)

    def write_artifacts(self, run_dir: Path, outputs: dict[str, torch.Tensor], labels: torch.Tensor | None,
                        images: torch.Tensor) -> dict[str, Any]:
        """tree.json (surviving nodes, parents, sizes, assignment per level), tree.png; metrics per level."""
        depth = self.depth
        paths = outputs[PATH].numpy()  # (N, L)
        node_mask = node_mask_from_leaves(self.leaf_mask).cpu().numpy()
        sizes = np.bincount(paths.reshape(-1), minlength=node_mask.size)
        sizes[0] = paths.shape[0]
        leaves = (np.flatnonzero(self.leaf_mask.cpu().numpy()) + 2**depth - 1).tolist()
        nodes = []
        for u in np.flatnonzero(node_mask).tolist():
            node = {"id": u, "level": (u + 1).bit_length() - 1, "parent": (u - 1) // 2 if u else None,
                    "children": [c for c in (2 * u + 1, 2 * u + 2) if c < node_mask.size and node_mask[c]],
                    "size": int(sizes[u])}
            if u in leaves:
                node["cluster"] = leaves.index(u)
            nodes.append(node)
        tree = {"depth": depth, "leaves": leaves,
                "pruned_leaves": [u for u in range(2**depth - 1, node_mask.size) if not node_mask[u]],
                "nodes": nodes,
                "assignments": {str(level): paths[:, level - 1] for level in range(1, depth + 1)}}
        write_json(run_dir / TREE_FILE, tree)
        report.plot_tree(run_dir / "tree.png", images.numpy(), outputs["cluster"].numpy(), nodes, depth,
                         seed=self.cfg.seed)
        if labels is None:
            return {}
        truth = labels.numpy()
        return {"levels": {str(level): {**clustering_metrics(truth, paths[:, level - 1]),
                                        "clusters_used": int(np.unique(paths[:, level - 1]).size)}
                           for level in range(1, depth + 1)}}
