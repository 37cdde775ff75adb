"""One training step of each official implementation, saved as the fixtures of tests/train/test_official_step.py.

Each case imports the official model, loss, optimiser and training-step code from a checkout of the
official repository (its path is an argument: none of the official code is copied into this project),
runs ONE step of the official training function on fixed input views (seeded tensors: augmentation is
outside this test) from fixed initial weights, on the CPU in fp32, and saves a small .npz under
tests/train/fixtures/official_step/: the views, the initial weights and BatchNorm buffers (official
names), every gradient the optimiser saw, and every parameter and buffer after the step (ProPos: the
target network after its EMA update too). tests/train/fixtures/official_step/README.md lists the
official lines each case runs, the hyper-parameters and the weight names.

Regenerate (about two minutes on two CPU cores; the official checkpoints are left out of the checkouts):

    mkdir -p /tmp/official && cd /tmp/official
    for spec in cc:Yunfan-Li/Contrastive-Clustering@61daba8 c3:Armanfard-Lab/C3@167a44c \\
                cohiclust:MichalZnalezniak/Contrastive-Hierarchical-Clustering@d8f873e propos:Hzzone/ProPos@cc35d8c; do
        name=${spec%%:*}; repo=${spec#*:}; repo=${repo%@*}; commit=${spec#*@}
        git clone -q --filter=blob:none --no-checkout https://github.com/$repo $name
        git -C $name sparse-checkout set --no-cone '/*' '!*.tar' '!*.pth' '!*.pdf'
        git -C $name checkout -q $commit
    done
    cd -   # the project's root
    PYTHONPATH=$PWD .venv/bin/python scripts/official_step_fixtures.py --cc /tmp/official/cc --c3 /tmp/official/c3 \\
        --cohiclust /tmp/official/cohiclust --propos /tmp/official/propos

What is the project's, not the official code's, in these runs:
- the backbone: the project's SmallCNN (train/backbones.py) at width 8 (8 -> 16 -> 16 -> 32 channels,
  BatchNorm after every conv, 32-d features) on 3 x 16 x 16 views, so a fixture weighs ~0.1-0.3 MB where
  the official ResNets would weigh tens of MB. The official wrappers take it as their backbone argument
  (CC/C3 `resnet` with `rep_dim`, ProPos `encoder` through its backbone_dict, CoHiClust `Model.f`).
- head widths: CC/C3/ProPos take them as constructor arguments (ProPos hidden 64, feature 32; CC/C3's
  hidden is the backbone's 32, feature_dim the official 128). CoHiClust's model.py hard-codes 512 hidden
  and the ResNet feature size, so its two heads are rebuilt at hidden 64 with the layers of model.py:36-38.
- device moves: `Tensor.cuda()` becomes a copy on the CPU (as a device move copies), `Module.cuda()` and
  `.to("cuda")` stay on the CPU, ProPos's `convert_to_ddp` wraps in CPU DistributedDataParallel (gloo)
  without device_ids. Modules the exercised lines import but never call (cv2, thop, omegaconf, munkres,
  torch_clustering, wandb, torch._six of torch < 2) are stand-ins when not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train.backbones import SmallCNN  # noqa: E402  (before any official directory joins sys.path)

OUT = ROOT / "tests" / "train" / "fixtures" / "official_step"
SIDE = 16
SMALLCNN_WIDTH = 8
SEED = 0
REPOSITORIES = {"cc": "Yunfan-Li/Contrastive-Clustering", "c3": "Armanfard-Lab/C3",
                "cohiclust": "MichalZnalezniak/Contrastive-Hierarchical-Clustering", "propos": "Hzzone/ProPos"}
CASES = {"cc": ("cc",), "c3": ("c3", "cc"), "cohiclust_simclr": ("cohiclust",), "cohiclust_tree": ("cohiclust",),
         "cohiclust_pruned": ("cohiclust",), "propos_psl": ("propos",), "propos_bn4": ("propos",),
         "propos_v2": ("propos",)}
"""fixture name -> the repositories it runs, its own first (C3 starts from a model trained by CC's code)."""


# --- what every case shares ----------------------------------------------------------------------


@dataclass
class Fixture:
    x1: torch.Tensor  # (B, 3, S, S) in [0, 1], before the official normalisation (recorded in meta)
    x2: torch.Tensor
    before: dict[str, np.ndarray]  # official state_dict names -> values before the step
    grads: dict[str, np.ndarray]  # official parameter names -> the gradient the optimiser stepped with
    after: dict[str, np.ndarray]
    meta: dict[str, Any]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # case-specific arrays

    def save(self, path: Path) -> None:
        arrays = {"x1": self.x1.numpy(), "x2": self.x2.numpy(), **self.extra,
                  **{f"before/{k}": v for k, v in self.before.items()},
                  **{f"grad/{k}": v for k, v in self.grads.items()},
                  **{f"after/{k}": v for k, v in self.after.items()},
                  "meta": np.array(json.dumps(self.meta, indent=1, sort_keys=True))}
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)


def small_backbone() -> SmallCNN:
    """The project's SmallCNN at width 8: (B, 3, 16, 16) -> (B, 32) pooled features."""
    return SmallCNN(3, width=SMALLCNN_WIDTH)


def make_views(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (B, 3, S, S) views in [0, 1] of the same B smooth random images: each image is 4 x 4 random
    colours upsampled; the second view is mirrored; both get their own pixel noise."""
    g = torch.Generator().manual_seed(seed)
    images = F.interpolate(torch.rand(batch, 3, 4, 4, generator=g), size=(SIDE, SIDE), mode="bilinear",
                           align_corners=False)
    x1 = (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    x2 = (images.flip(-1) + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return x1, x2


def state(module: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every parameter and buffer by its official name (`skip`: prefixes that alias other entries)."""
    return {k: v.detach().cpu().clone().numpy() for k, v in module.state_dict().items()
            if not k.startswith(skip)}


@contextlib.contextmanager
def gradients_at_step(optimizer: torch.optim.Optimizer, module: nn.Module) -> Iterator[dict[str, np.ndarray]]:
    """Record, when the official code calls optimizer.step(), the gradient of every parameter that has one."""
    names = {p: n for n, p in module.named_parameters()}
    grads: dict[str, np.ndarray] = {}
    step = optimizer.step

    def recording_step(*args, **kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[names[p]] = p.grad.detach().clone().numpy()
        return step(*args, **kwargs)

    optimizer.step = recording_step
    try:
        yield grads
    finally:
        del optimizer.step


def _on_cpu(device: Any) -> Any:
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


@contextlib.contextmanager
def device_moves_on_cpu() -> Iterator[None]:
    """The official code's CUDA moves, on the CPU: Tensor.cuda() copies (a device move copies, so a leaf
    that requires grad becomes a non-leaf, as the official losses rely on), Module.cuda() is a no-op,
    Tensor.to("cuda") stays on the CPU."""
    tensor_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        return tensor_to(self, *(_on_cpu(a) for a in args), **kwargs)

    patches = [(torch.Tensor, "cuda", lambda self, *a, **k: self.clone()),
               (nn.Module, "cuda", lambda self, *a, **k: self),
               (torch.Tensor, "to", to)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def stand_in_if_missing(name: str, **attributes: Any) -> None:
    """An empty module for one the official file imports but the exercised lines never call, when it is
    not installed here."""
    try:
        importlib.import_module(name)
    except ImportError:
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module


def load_file(repo: Path, filename: str, name: str) -> types.ModuleType:
    """Import the repository's top-level script `filename` (train.py, main.py) under a name of its own, so it
    cannot clash with the project's `train` package; its own imports resolve in the repository."""
    spec = importlib.util.spec_from_file_location(name, repo / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def namespace(values: Any) -> Any:
    """A nested YAML mapping as attribute access (what OmegaConf gives main.py)."""
    if isinstance(values, dict):
        return types.SimpleNamespace(**{k: namespace(v) for k, v in values.items()})
    return values


def commit_of(repo: Path) -> str:
    result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown (not a git checkout)"


def provenance(case: str, repo: Path) -> dict[str, Any]:
    return {"case": case, "repository": REPOSITORIES[CASES[case][0]], "commit": commit_of(repo),
            "generator": "scripts/official_step_fixtures.py", "torch": torch.__version__,
            "python": platform.python_version(), "smallcnn_width": SMALLCNN_WIDTH}


def csv(values: Any) -> str:
    """Per-channel constants as the project's config writes them: "0.4914,0.4822,0.4465"."""
    return ",".join(str(float(v)) for v in values)


# --- CC and C3 -----------------------------------------------------------------------------------

CC_CLUSTERS = 10
CC_BATCH = 8
CC_SHAPE = {"dataset": "cifar10", "step": {"epoch": 0},
            "shape": {"backbone": "smallcnn", "image_size": SIDE, "hidden_dim": 4 * SMALLCNN_WIDTH,
                      "num_clusters": CC_CLUSTERS, "batch_size": CC_BATCH}}
"""What the CC and C3 fixtures share in their meta: the project's data set, the step's epoch, the sizes."""


def cc_network(feature_dim: int) -> nn.Module:
    """The official modules/network.py Network on the small backbone (its `resnet` argument, with `rep_dim`)."""
    from modules import network  # the repository's

    torch.manual_seed(SEED)
    trunk = small_backbone()
    trunk.rep_dim = trunk.out_dim
    return network.Network(trunk, feature_dim, CC_CLUSTERS)


def official_cc_trainer(cc: Path) -> tuple[types.ModuleType, dict[str, Any]]:
    """CC's train.py with the globals its train() reads set as its __main__ block sets them (train.py:103-117):
    the Network on the small backbone, Adam, InstanceLoss, ClusterLoss; and the official config. Loaded by
    path, so it works with C3's directory first on sys.path too (its `modules` imports resolve to C3's copies)."""
    stand_in_if_missing("cv2")
    trainer = load_file(cc, "train.py", "official_cc_train")
    losses = load_file(cc, "modules/contrastive_loss.py", "official_cc_losses")
    config = load_file(cc, "utils/yaml_config_hook.py", "official_cc_config").yaml_config_hook(
        str(cc / "config" / "config.yaml"))
    trainer.model = cc_network(config["feature_dim"])
    trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=config["learning_rate"],
                                         weight_decay=config["weight_decay"])  # train.py:107
    cpu = torch.device("cpu")
    trainer.criterion_instance = losses.InstanceLoss(CC_BATCH, config["instance_temperature"], cpu)
    trainer.criterion_cluster = losses.ClusterLoss(CC_CLUSTERS, config["cluster_temperature"], cpu)
    return trainer, config


def cc_case(case: str, repos: dict[str, Path]) -> Fixture:
    repo = repos["cc"]
    official, config = official_cc_trainer(repo)
    model = official.model
    x1, x2 = make_views(CC_BATCH, seed=1)
    official.data_loader = [((x1, x2), torch.zeros(CC_BATCH, dtype=torch.long))]
    before = state(model)
    with device_moves_on_cpu(), gradients_at_step(official.optimizer, model) as grads:
        official.train()  # train.py:11-27: one batch
    meta = {**provenance(case, repo),
            "exercises": ["train.py:11-27 train(): one batch, optimizer.zero_grad, model(x_i, x_j), instance + "
                          "cluster loss, backward, step", "train.py:107 Adam(model.parameters(), lr, weight_decay)",
                          "train.py:114-117 InstanceLoss(batch_size, 0.5), ClusterLoss(class_num, 1.0)",
                          "modules/network.py:6-34 Network: one resnet pass per view, instance_projector, "
                          "cluster_projector", "modules/contrastive_loss.py:6-92 InstanceLoss, ClusterLoss",
                          "config/config.yaml"],
            "official": {k: config[k] for k in ("learning_rate", "weight_decay", "instance_temperature",
                                                "cluster_temperature", "feature_dim")},
            "config": {"optimizer": "adam", "lr": config["learning_rate"], "weight_decay": config["weight_decay"],
                       "instance_temperature": config["instance_temperature"],
                       "cluster_temperature": config["cluster_temperature"],
                       "feature_dim": config["feature_dim"], "normalize": False},
            **CC_SHAPE}
    return Fixture(x1, x2, before, grads, state(model), meta)


C3_CC_STEPS = 50
"""C3 fine-tunes a trained CC model: its initial weights are the official CC step run this many times on other
seeded batches. From a random initialisation every embedding pair is above zeta (cosine > 0.6), so the C3
loss and its gradient would be exactly 0; after 50 CC steps about half the pairs of the fixture's batch are
below zeta and the two views of each image above."""


def cc_pretrained(cc: Path) -> nn.Module:
    """CC's Network after C3_CC_STEPS official CC steps (CC's train.py:11-27, config/config.yaml)."""
    trainer, _ = official_cc_trainer(cc)
    with device_moves_on_cpu(), contextlib.redirect_stdout(io.StringIO()):
        for step in range(C3_CC_STEPS):
            trainer.data_loader = [(make_views(CC_BATCH, seed=1000 + step), None)]
            trainer.train()
    return trainer.model


def c3_case(case: str, repos: dict[str, Path]) -> Fixture:
    stand_in_if_missing("cv2")
    repo = repos["c3"]
    official = load_file(repo, "train.py", "official_c3_train")
    from utils.yaml_config_hook import yaml_config_hook

    config = yaml_config_hook(str(repo / "config" / "config.yaml"))
    x1, x2 = make_views(CC_BATCH, seed=2)
    net = cc_pretrained(repos["cc"])  # C3's network is CC's (modules/network.py)
    optimizer = torch.optim.Adam(net.parameters(), lr=config["learning_rate"])  # main.py:82
    before = state(net)
    with device_moves_on_cpu(), gradients_at_step(optimizer, net) as grads:
        official.train_net(net, [((x1, x2), torch.zeros(CC_BATCH, dtype=torch.long))], optimizer, CC_BATCH,
                           config["zeta"])  # train.py:6-27
    meta = {**provenance(case, repo),
            "exercises": ["train.py:6-27 train_net(): net.train(), every parameter requires_grad, one resnet "
                          "pass per view, instance_projector, C3_loss, backward, step",
                          "main.py:82 Adam(net.parameters(), lr) (no weight decay)",
                          "modules/contrastive_loss.py:4-17 C3_loss(z_i, z_j, batch_size, zeta)",
                          "modules/network.py Network (CC's)", "config/config.yaml",
                          f"initial weights: {REPOSITORIES['cc']} ({commit_of(repos['cc'])}) train.py:11-27 run "
                          f"{C3_CC_STEPS} times on other seeded batches (C3 fine-tunes a CC model)"],
            "official": {k: config[k] for k in ("learning_rate", "zeta", "feature_dim")},
            "config": {"optimizer": "adam", "lr": config["learning_rate"], "weight_decay": 0.0,
                       "zeta": config["zeta"], "instance_temperature": 1.0, "feature_dim": config["feature_dim"],
                       "normalize": False},
            **CC_SHAPE}
    return Fixture(x1, x2, before, grads, state(net), meta)


# --- CoHiClust -----------------------------------------------------------------------------------

CHC_BATCH = 8
CHC_HIDDEN = 64
CHC_PRUNED_BEFORE = (3, 12)
"""Leaves (leaf-level indices) already pruned in the after-pruning case: in two different sibling pairs."""
CHC_EPOCH = {"cohiclust_simclr": 1, "cohiclust_tree": 1001, "cohiclust_pruned": 1053}
"""The official 1-based epoch of each case: SimCLR only (<= pretraining_epochs 1000), tree loss on, and the
third pruning epoch (1050 < epoch <= 1056: the step's epoch ends by pruning a third leaf)."""


def cohiclust_case(case: str, repos: dict[str, Path]) -> Fixture:
    repo = repos["cohiclust"]
    stand_in_if_missing("thop", profile=None, clever_format=None)
    stand_in_if_missing("omegaconf", OmegaConf=None)
    import yaml

    official = load_file(repo, "main.py", "official_cohiclust_main")
    import model as official_model  # the repository's model.py
    import utils as official_utils  # the repository's utils.py

    cfg = namespace(yaml.safe_load((repo / "cfg" / "cifar10.yaml").read_text()))
    depth, epoch = cfg.tree.tree_level, CHC_EPOCH[case]
    official.temperature, official.batch_size, official.epochs = (  # main.py:150-151 set these globals
        cfg.simclr.temperature, CHC_BATCH, cfg.training.epochs)
    normalize = official_utils.get_transforms("cifar10")[0].transforms[-1]  # utils.py:16
    x1, x2 = make_views(CHC_BATCH, seed=3)
    with device_moves_on_cpu():
        net = official_model.Model(cfg=cfg)
    torch.manual_seed(SEED)
    net.f = small_backbone()
    features = net.f.out_dim
    # model.py:36-38 at the fixture's widths (the file hard-codes 512 hidden and the ResNet's feature size)
    projection = cfg.simclr.feature_dim_projection_head
    net.g = nn.Sequential(nn.Linear(features, CHC_HIDDEN, bias=False), nn.BatchNorm1d(CHC_HIDDEN),
                          nn.ReLU(inplace=True), nn.Linear(CHC_HIDDEN, projection, bias=True))
    net.tree_model = nn.Sequential(nn.Linear(features, ((2 ** (depth + 1)) - 1) - 2 ** depth), nn.Sigmoid())
    if case == "cohiclust_pruned":
        net.masks_for_level[depth][list(CHC_PRUNED_BEFORE)] = 0
    mask_before = net.masks_for_level[depth].clone()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-6)  # main.py:175
    before = state(net)
    batch = [(normalize(x1.clone()), normalize(x2.clone()), torch.zeros(CHC_BATCH, dtype=torch.long))]
    with device_moves_on_cpu(), gradients_at_step(optimizer, net) as grads:
        official.train(net, batch, optimizer, epoch, cfg)  # main.py:20-68
    tree_on = epoch > cfg.training.pretraining_epochs
    meta = {**provenance(case, repo),
            "exercises": ["main.py:20-68 train(): one batch, net(pos_1), net(pos_2) (one pass per view), SimCLR "
                          "loss (32-40), the tree and regularisation losses only after pretraining_epochs (43-50), "
                          "backward, step, and in the pruning epochs the leaf of smallest mean probability pruned "
                          "(62-66)", "main.py:175 Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)",
                          "tree_losses.py:4-56 probability_vec_with_level, tree_loss, regularization_loss",
                          "model.py:7-47 Model (f: the small backbone; g and tree_model rebuilt at the fixture's "
                          "widths with the layers of model.py:36-38)", "utils.py:16 Normalize (CIFAR-10)",
                          "cfg/cifar10.yaml"],
            "official": {"temperature": cfg.simclr.temperature, "tree_level": depth, "lr": 1e-3,
                         "weight_decay": 1e-6, "pretraining_epochs": cfg.training.pretraining_epochs,
                         "start_pruning_epochs": cfg.training.start_pruning_epochs,
                         "leaves_to_prune": cfg.training.leaves_to_prune, "epoch": epoch, "tree_loss_on": tree_on,
                         "normalize_mean": list(normalize.mean), "normalize_std": list(normalize.std)},
            "config": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-6, "temperature": cfg.simclr.temperature,
                       "depth": depth, "prune": cfg.training.leaves_to_prune,
                       "simclr_epochs": cfg.training.pretraining_epochs,
                       "prune_start_epoch": cfg.training.start_pruning_epochs + 1,
                       "feature_dim": cfg.simclr.feature_dim_projection_head, "normalize": True,
                       "normalize_mean": csv(normalize.mean), "normalize_std": csv(normalize.std)},
            "dataset": "cifar10",
            "shape": {"backbone": "smallcnn", "image_size": SIDE, "hidden_dim": CHC_HIDDEN,
                      "num_clusters": 2 ** depth - cfg.training.leaves_to_prune, "batch_size": CHC_BATCH},
            "step": {"epoch": epoch - 1, "epochs": cfg.training.epochs}}
    extra = {"leaf_mask_before": mask_before.numpy() > 0, "leaf_mask_after": net.masks_for_level[depth].numpy() > 0}
    return Fixture(x1, x2, before, grads, state(net), meta, extra)


# --- ProPos --------------------------------------------------------------------------------------

PP_HIDDEN, PP_FEATURES = 64, 32
PP_EPOCH = 51
"""The first epoch after the 50 warm-up epochs (1-based, as basic_template.py counts): PSL and the noise on."""
PP_IMAGES = 60000
"""CIFAR-10/20 train + test (whole_dataset): the official iterations per epoch are this // the recipe's batch."""
TARGET_LAG = 0.02
"""Std of the offset of the target network's initial weights from the online network's."""


@dataclass(frozen=True)
class ProPosCase:
    config: str  # the official config file
    dataset: str  # the project's name of its data set
    world: int  # processes
    per_device: int  # images per process
    clusters: int
    labels: tuple[int, ...]  # the global batch's pseudo-labels


PP_CASES = {
    # CIFAR-10's recipe (v1) on one process; cluster 4 absent from the batch: logit -10
    "propos_psl": ProPosCase("cifar10_r18_propos.yml", "cifar10", 1, 8, 5, (0, 1, 2, 3, 0, 1, 2, 0)),
    # the same on the official 4 processes, every cluster on every process
    "propos_bn4": ProPosCase("cifar10_r18_propos.yml", "cifar10", 4, 4, 3,
                             (0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2, 1, 0)),
    # CIFAR-20's recipe (v2: the EMA update first, both views in one pass; cosine EMA momentum), one process
    "propos_v2": ProPosCase("cifar20_r18_propos.yml", "cifar100", 1, 8, 5, (0, 1, 2, 3, 0, 1, 2, 0)),
}


class _NullLogger:
    """The LoggerX calls of the exercised lines (msg, msg_str, modules) do nothing here."""

    modules: list = []

    def msg(self, *args, **kwargs) -> None:
        pass

    def msg_str(self, *args, **kwargs) -> None:
        pass


def _import_propos(repo: Path) -> types.ModuleType:
    """models.propos.byol without models/__init__.py (which imports every model of the repository)."""
    stand_in_if_missing("torch._six", string_classes=(str, bytes), inf=math.inf)
    for name in ("munkres", "torch_clustering", "wandb"):
        stand_in_if_missing(name, Munkres=None)
    from utils.model_register import Register  # the repository's

    package = types.ModuleType("models")
    package.__path__ = [str(repo / "models")]
    package.model_dict = Register("model_dict")
    sys.modules["models"] = package
    return importlib.import_module("models.propos.byol")


def propos_worker(rank: int, case: str, repo: str, port: int, out: str) -> None:
    """One of the official run's processes: DDP over gloo, its slice of the global batch."""
    spec = PP_CASES[case]
    world, per_device, clusters, labels = spec.world, spec.per_device, spec.clusters, list(spec.labels)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    repo_path = Path(repo)
    sys.path.insert(0, repo)
    import yaml

    byol = _import_propos(repo_path)
    import network  # the repository's
    from utils.grad_scaler import NativeScalerWithGradNormCount

    # main.py:31-37: the default and private options, then the config file over them
    default_opt, unknown = byol.TrainTask.build_default_options().parse_known_args("")
    opt = byol.BYOL.build_options().parse_args(unknown, namespace=default_opt)
    for k, v in yaml.safe_load((repo_path / "config" / spec.config).read_text()).items():
        setattr(opt, k, v)
    recipe_batch = opt.batch_size * opt.num_devices  # 4 x 128 (CIFAR-10), 4 x 64 (CIFAR-20)
    iters_per_epoch = PP_IMAGES // recipe_batch
    network.backbone_dict["smallcnn"] = [small_backbone, 4 * SMALLCNN_WIDTH]
    opt.encoder_name, opt.hidden_size, opt.feat_dim, opt.batch_size = "smallcnn", PP_HIDDEN, PP_FEATURES, per_device
    # basic_template.py:30-33 scales the lr by the global batch: the recipe's (not the fixture's) 512 images give 0.1
    opt.learning_rate = opt.learning_rate * recipe_batch / 256

    torch.manual_seed(SEED)  # main.py:52: every process seeds the same
    task = byol.BYOL.__new__(byol.BYOL)  # TrainTask.__init__ loads data and loggers; its step state is set here
    task.opt, task.logger, task.num_cluster = opt, _NullLogger(), clusters
    task.cur_epoch, task.iter_per_epoch, task.verbose = PP_EPOCH, iters_per_epoch, rank == 0
    byol.convert_to_ddp = nn.parallel.DistributedDataParallel  # ops.py convert_to_ddp, on the CPU
    with device_moves_on_cpu():
        task.set_model()  # byol.py:27-57
    task.scaler = NativeScalerWithGradNormCount(amp=opt.amp)  # basic_template.py:47
    task.psedo_labels = torch.tensor(labels)
    wrapper = task.byol.module
    # At epoch 51 the target lags the online network; started equal (as set_model leaves them), the EMA of this
    # step could not tell the official order (before the optimiser step, from the weights it stepped from) from
    # an update after the step. The same draws on every process.
    lag = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for p in wrapper.k_params:
            p.add_(TARGET_LAG * torch.randn(p.shape, generator=lag))
    normalize = task.normalize(opt.dataset)  # basic_template.py:292-309

    x1, x2 = make_views(world * per_device, seed=4)
    mine = slice(rank * per_device, (rank + 1) * per_device)
    inputs = ((normalize(x1[mine].clone()), normalize(x2[mine].clone())), torch.zeros(per_device, dtype=torch.long))
    indices = torch.arange(world * per_device)[mine]
    n_iter = (PP_EPOCH - 1) * iters_per_epoch + 1  # the epoch's first iteration (basic_template.py:372-387)

    noise: list[torch.Tensor] = []
    shuffles: list[torch.Tensor] = []
    randn_like, shuffle = torch.randn_like, wrapper._batch_shuffle_ddp

    def recording_randn_like(t, *args, **kwargs):
        drawn = randn_like(t, *args, **kwargs)
        noise.append(drawn.clone())
        return drawn

    def recording_shuffle(x):
        shuffled, unshuffle = shuffle(x)
        shuffles.append(torch.argsort(unshuffle))
        return shuffled, unshuffle

    wrapper._batch_shuffle_ddp = recording_shuffle
    before = state(wrapper, skip=("encoder.",))
    torch.randn_like = recording_randn_like
    try:
        with device_moves_on_cpu(), gradients_at_step(task.optimizer, wrapper) as grads:
            task.adjust_learning_rate(n_iter)  # basic_template.py:386 -> byol.py:117-139
            lrs = {"predictor" in group["name"]: group["lr"] for group in task.optimizer.param_groups}
            momentum = wrapper.m
            task.train(inputs, indices, n_iter)  # byol.py:87-115
    finally:
        torch.randn_like = randn_like
    after = state(wrapper, skip=("encoder.",))
    buffers = {k: v for k, v in after.items() if "running_" in k or "num_batches" in k}
    gathered = [None] * world
    dist.all_gather_object(gathered, {"noise": [n.numpy() for n in noise], "buffers": buffers})
    dist.destroy_process_group()
    if rank != 0:
        return
    extra = {"pseudo_labels": np.array(labels, dtype=np.int64), "indices": np.arange(world * per_device)}
    if opt.v2:  # one draw per process for q of [view 1; view 2]; one shuffle of the gathered keys [view 2; view 1]
        halves = [np.split(g["noise"][0], 2) for g in gathered]
        extra["noise_12"] = np.concatenate([h[0] for h in halves])
        extra["noise_21"] = np.concatenate([h[1] for h in halves])
        extra["shuffle_keys"] = shuffles[0].numpy()
    else:  # forward_loss(im_q, im_k), then forward_loss(im_k, im_q) (symmetric): a draw and a shuffle each
        for i, direction in enumerate(("12", "21")):
            extra[f"noise_{direction}"] = np.concatenate([g["noise"][i] for g in gathered])
            extra[f"shuffle_{direction}"] = shuffles[i].numpy()
    for r, g in enumerate(gathered[1:], start=1):
        extra.update({f"after_rank{r}/{k}": v for k, v in g["buffers"].items()})
    meta = {**provenance(case, repo_path),
            "exercises": [
                "byol.py:87-115 BYOL.train(): psedo_labels, is_warmup (cur_epoch > warmup_epochs), latent_std, "
                "the DDP forward, loss = contrastive + cluster_loss_weight * cluster, scaler (backward, SGD step)",
                "byol.py:117-139 adjust_learning_rate (cosine, predictor lr x lambda_predictor_lr, EMA momentum)",
                "byol.py:27-57 set_model: BYOLWrapper, SGD over collect_params (basic_template.py:559-570)",
                "byol_wrapper.py:220-254 forward_v2: the EMA update of the target first, both views in one online "
                "pass, the keys [view 2; view 1] shuffled through one target pass, PSA over both, PSL per view"
                if opt.v2 else
                "byol_wrapper.py:185-218 forward (v1, symmetric): forward_loss per direction, then the EMA "
                "update of the target before backward and step",
                "byol_wrapper.py:135-183 forward_k (shuffling_bn: _batch_shuffle_ddp, moco_wrapper.py:77-122), "
                "forward_loss (noise, PSA, PSL through GatherLayer, utils/gather_layer.py)",
                "byol_wrapper.py:96-133 compute_centers, compute_cluster_loss (absent clusters of this "
                "device's batch at -10)", "basic_template.py:30-33 lr x global batch / 256, 292-309 Normalize",
                "utils/grad_scaler.py NativeScalerWithGradNormCount (amp off)", "config/cifar10_r18_propos.yml"],
            "official": {"world_size": world, "per_device_batch": per_device, "num_cluster": clusters,
                         "cur_epoch": PP_EPOCH, "n_iter": n_iter, "iter_per_epoch": iters_per_epoch,
                         "learning_rate": opt.learning_rate, "lr_at_step": lrs[False],
                         "predictor_lr_at_step": lrs[True], "ema_momentum": momentum, "target_lag": TARGET_LAG,
                         "momentum": opt.momentum, "weight_decay": opt.weight_decay,
                         "temperature": opt.temperature, "latent_std": opt.latent_std,
                         "cluster_loss_weight": opt.cluster_loss_weight,
                         "lambda_predictor_lr": opt.lambda_predictor_lr, "symmetric": opt.symmetric,
                         "shuffling_bn": opt.shuffling_bn, "v2": opt.v2, "warmup_epochs": opt.warmup_epochs,
                         "exclude_bias_and_bn": opt.exclude_bias_and_bn,
                         "normalize_mean": list(normalize.mean), "normalize_std": list(normalize.std)},
            "config": {"optimizer": "sgd", "lr": opt.learning_rate, "momentum": opt.momentum,
                       "weight_decay": opt.weight_decay, "ema_momentum": opt.momentum_base,
                       "ema_schedule": "cosine" if opt.momentum_increase else "constant",
                       "noise_sigma": opt.latent_std, "psl_weight": opt.cluster_loss_weight,
                       "psl_temperature": opt.temperature, "predictor_lr_scale": float(opt.lambda_predictor_lr),
                       "psl_warmup_epochs": opt.warmup_epochs, "symmetric": opt.symmetric,
                       "shuffling_bn": opt.shuffling_bn, "v2": opt.v2, "normalize": True,
                       "normalize_mean": csv(normalize.mean), "normalize_std": csv(normalize.std),
                       **({"bn_groups": world} if world > 1 else {})},
            "dataset": spec.dataset,
            "shape": {"backbone": "smallcnn", "image_size": SIDE, "hidden_dim": PP_HIDDEN,
                      "feature_dim": PP_FEATURES, "num_clusters": clusters, "batch_size": world * per_device,
                      **({} if world > 1 else {"bn_groups": 1})},
            "step": {"epoch": PP_EPOCH - 1, "steps_per_epoch": iters_per_epoch}}
    Fixture(x1, x2, before, grads, after, meta, extra).save(Path(out))


def run_propos(case: str, repo: Path, out: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(propos_worker, args=(case, str(repo), port, str(out)), nprocs=PP_CASES[case].world)


# --- driver --------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[str, dict[str, Path]], Fixture]] = {"cc": cc_case, "c3": c3_case,
                                                                  "cohiclust": cohiclust_case}


def run_case(case: str, repos: dict[str, Path], out: Path) -> None:
    """One case in this process (its repository's directory first on sys.path)."""
    torch.set_num_threads(1)  # one summation order wherever it is regenerated
    own = CASES[case][0]
    if own == "propos":
        run_propos(case, repos[own], out)
        return
    sys.path.insert(0, str(repos[own]))
    RUNNERS[own](case, repos).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, repo in REPOSITORIES.items():
        parser.add_argument(f"--{name}", type=Path, help=f"a checkout of {repo}")
    parser.add_argument("--out", type=Path, default=OUT, help="fixture directory (default: %(default)s)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="only these cases (repeatable)")
    parser.add_argument("--run", choices=sorted(CASES), help=argparse.SUPPRESS)  # one case, in a fresh process
    args = parser.parse_args()
    cases = [args.run] if args.run else args.case or sorted(CASES)
    needed = sorted({name for case in cases for name in CASES[case]})
    missing = [name for name in needed if getattr(args, name) is None]
    if missing:
        parser.error("give the checkout of " + ", ".join(f"--{m} ({REPOSITORIES[m]})" for m in missing))
    repos = {name: getattr(args, name).resolve() for name in needed}
    for name, repo in repos.items():
        if not repo.is_dir():
            parser.error(f"--{name} {repo}: no such directory")
    if args.run:
        run_case(args.run, repos, args.out / f"{args.run}.npz")
        return
    for case in cases:
        # each case in a process of its own: the repositories' top-level modules (modules, utils, model) clash
        command = [sys.executable, __file__, "--run", case, "--out", str(args.out)]
        command += [arg for name in CASES[case] for arg in (f"--{name}", str(repos[name]))]
        subprocess.run(command, check=True)
        size = (args.out / f"{case}.npz").stat().st_size
        print(f"{case}: {args.out / case}.npz, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
