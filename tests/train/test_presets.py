"""The `paper` presets are the official code's recipes, point by point.

TABLE holds, for every method x data set x field that the official code fixes, the official value and
where the official code sets it (repository, path and line, read at the repositories' newest commits:
Yunfan-Li/Contrastive-Clustering 61daba8, Armanfard-Lab/C3 167a44c,
MichalZnalezniak/Contrastive-Hierarchical-Clustering d8f873e, Hzzone/ProPos cc35d8c,
Hzzone/torch_clustering b7fb417). Each row is checked against the resolved config
(`train.methods.make_config(method, dataset=..., preset="paper")`), and each row is shown to fail
when its value in the preset changes.

What the official code fixes beyond configuration values is tested where it is implemented:
- ProPos PSL per direction, absent clusters at logit -10, predictor N(0, 0.01), class-balanced
  resampling after every k-means: tests/train/test_propos.py; its schedule: test_trainer.py; its
  E-step k-means with torch_clustering's restarts: test_kmeans.py.
- One training step against the official code's (views, BatchNorm, optimiser, EMA, pruning):
  test_official_step.py.
- CoHiClust leaf-only masking after pruning, the pruning statistic and its epochs: test_cohiclust.py.
- torchvision's ColorJitter (four jitters in a random order per image), RandomResizedCrop's box sampling,
  the 23 px blur at 224 px, crops of the stored images at the model size: test_augment.py.
- The normalisation constants reaching the model: test_the_constants_standardise_the_models_input below.
- STL-10's two-phase epoch, the 224 px ImageNet-stem step, splits: test_trainer.py, test_datasets.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from train.config import Config, split_names
from train.data.datasets import DATASETS, resolve_splits
from train.methods import get_method, make_config

CC = "Yunfan-Li/Contrastive-Clustering"
C3 = "Armanfard-Lab/C3"
CHC = "MichalZnalezniak/Contrastive-Hierarchical-Clustering"
PROPOS = "Hzzone/ProPos"
KMEANS = "Hzzone/torch_clustering"


@dataclass(frozen=True)
class Official:
    method: str
    dataset: str
    field: str  # a config field, or one of DERIVED
    value: Any
    source: str

    @property
    def id(self) -> str:
        return f"{self.method}-{self.dataset}-{self.field}"


def colour_jitter(cfg: Config) -> tuple[float, ...]:
    """ColorJitter(brightness, contrast, saturation, hue) the config's jitter_strength s stands for."""
    s = cfg.jitter_strength
    return (round(0.8 * s, 6), round(0.8 * s, 6), round(0.8 * s, 6), round(0.2 * s, 6))


DERIVED = {
    "colour_jitter": (colour_jitter, "jitter_strength"),
    "stored_side": (lambda cfg: cfg.stored_side(), "stored_size"),
    "train_splits": (lambda cfg: resolve_splits(cfg.dataset, split_names(cfg.train_splits)), "train_splits"),
    "eval_splits": (lambda cfg: resolve_splits(cfg.dataset, split_names(cfg.eval_splits or cfg.train_splits)),
                    "eval_splits"),
    "instance_splits": (lambda cfg: split_names(cfg.instance_splits), "instance_splits"),
    "normalize_mean": (lambda cfg: (cfg.normalization_constants() or ((), ()))[0], "normalize_mean"),
    "normalize_std": (lambda cfg: (cfg.normalization_constants() or ((), ()))[1], "normalize_std"),
}
"""Table fields computed from the config: field -> (how, the config field a preset sets for it)."""

CC_SETS = ("cifar10", "cifar100", "stl10", "imagenet10", "imagenet-dogs", "tiny-imagenet")
SUBSETS = ("imagenet10", "imagenet-dogs")
CC_JITTER = {"cifar10": (0.4, 0.4, 0.4, 0.1, "train.py:50"), "cifar100": (0.4, 0.4, 0.4, 0.1, "train.py:65"),
             "tiny-imagenet": (0.4, 0.4, 0.4, 0.1, "train.py:90"), "stl10": (0.8, 0.8, 0.8, 0.2, "train_STL10.py:65"),
             "imagenet10": (0.8, 0.8, 0.8, 0.2, "train.py:78"), "imagenet-dogs": (0.8, 0.8, 0.8, 0.2, "train.py:84")}
"""CC's ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) (modules/transform.py:26) with s as the data set's train.py passes it
(the default s = 1.0 at modules/transform.py:22 where it passes none)."""
CC_SPLITS = {"cifar10": (("train", "test"), "train.py:58"), "cifar100": (("train", "test"), "train.py:73"),
             "stl10": (("train", "test"), "train_STL10.py:79"),
             "tiny-imagenet": (("train",), "train.py:89 (tiny-imagenet-200/train only)")}
"""The splits trained on, where the format has more than one (the ImageNet subsets' folders are one split)."""
CC_EVAL = {"cifar10": "cluster.py:53", "cifar100": "cluster.py:68", "stl10": "cluster.py:83",
           "tiny-imagenet": "cluster.py:98-99"}


def cc_family_rows(method: str, note: str = "") -> list[Official]:
    """CC's input, stem, augmentation and data per data set; C3 and DRC train at CC's resolution too."""
    rows = []
    for d in CC_SETS:
        rows += [
            Official(method, d, "image_size", 224, f"{CC}:config/config.yaml:8 (image_size: 224){note}"),
            Official(method, d, "stem", "imagenet", f"{CC}:modules/resnet.py:27,31 (7x7/2 conv, 3x3/2 max-pool){note}"),
            Official(method, d, "crop_min_scale", 0.08, f"{CC}:modules/transform.py:24 (RandomResizedCrop's default "
                                                        f"scale (0.08, 1)){note}"),
            Official(method, d, "flip_p", 0.5, f"{CC}:modules/transform.py:25{note}"),
            Official(method, d, "jitter_p", 0.8, f"{CC}:modules/transform.py:27{note}"),
            Official(method, d, "jitter_order", "random", f"{CC}:modules/transform.py:26 (torchvision ColorJitter: "
                                                          f"a random order per image){note}"),
            Official(method, d, "gray_p", 0.2, f"{CC}:modules/transform.py:28{note}"),
            Official(method, d, "normalize", False, f"{CC}:modules/transform.py:37 (no mean/std passed){note}"),
            Official(method, d, "colour_jitter", CC_JITTER[d][:4], f"{CC}:{CC_JITTER[d][4]}{note}"),
            Official(method, d, "blur_p", 0.5 if d in SUBSETS else 0.0,
                     f"{CC}:" + ("train.py:78,84 (blur=True), modules/transform.py:15 (p 0.5)" if d in SUBSETS
                                 else "modules/transform.py:30 (blur only where train.py passes blur=True)") + note),
        ]
        if d in ("cifar10", "cifar100", "stl10", "tiny-imagenet"):  # stored as distributed: crops of the file's side
            side = {"cifar10": 32, "cifar100": 32, "stl10": 96, "tiny-imagenet": 64}[d]
            rows.append(Official(method, d, "stored_side", side, f"{CC}:train.py:46 / train_STL10.py:61 "
                                                                 f"(torchvision keeps the {side} px images){note}"))
    return rows


def cc_rows() -> list[Official]:
    rows = cc_family_rows("cc")
    for d in CC_SETS:
        rows += [
            Official("cc", d, "backbone", "resnet34", f"{CC}:config/config.yaml:14"),
            Official("cc", d, "batch_size", 256, f"{CC}:config/config.yaml:7"),
            Official("cc", d, "epochs", 1000, f"{CC}:config/config.yaml:10"),
            Official("cc", d, "optimizer", "adam", f"{CC}:train.py:107"),
            Official("cc", d, "lr", 3e-4, f"{CC}:config/config.yaml:20"),
            Official("cc", d, "weight_decay", 0.0, f"{CC}:config/config.yaml:21"),
            Official("cc", d, "schedule", "constant", f"{CC}:train.py:119-123 (no scheduler)"),
            Official("cc", d, "instance_temperature", 0.5, f"{CC}:config/config.yaml:22"),
            Official("cc", d, "cluster_temperature", 1.0, f"{CC}:config/config.yaml:23"),
            Official("cc", d, "feature_dim", 128, f"{CC}:config/config.yaml:15"),
            Official("cc", d, "hidden_dim", 512, f"{CC}:modules/network.py:13 (rep_dim of ResNet-34)"),
            Official("cc", d, "bn_groups", 1, f"{CC}:train.py:105 (one device: model.to('cuda'))"),
            Official("cc", d, "amp", False, f"{CC}:train.py:11-27 (fp32: no autocast)"),
        ]
        if d in CC_SPLITS:
            rows += [Official("cc", d, "train_splits", CC_SPLITS[d][0], f"{CC}:{CC_SPLITS[d][1]}"),
                     Official("cc", d, "eval_splits", CC_SPLITS[d][0], f"{CC}:{CC_EVAL[d]}")]
    rows.append(Official("cc", "stl10", "instance_splits", ("unlabelled",),
                         f"{CC}:train_STL10.py:73-80 (instance_dataset = the unlabeled split), 11-25 (instance "
                         f"loss only over it, then both losses on train+test)"))
    return rows


def c3_rows() -> list[Official]:
    # the official config (config/config.yaml) is CIFAR-10's; the paper fine-tunes every data set the same way
    rows = cc_family_rows("c3", note=f"; C3 keeps CC's input: {C3}:config/config.yaml:11")
    for d in CC_SETS:
        rows += [
            Official("c3", d, "backbone", "resnet34", f"{C3}:config/config.yaml:18"),
            Official("c3", d, "batch_size", 128, f"{C3}:config/config.yaml:9"),
            Official("c3", d, "epochs", 20, f"{C3}:config/config.yaml:13 (max_epochs)"),
            Official("c3", d, "optimizer", "adam", f"{C3}:main.py:82"),
            Official("c3", d, "lr", 1e-5, f"{C3}:config/config.yaml:24"),
            Official("c3", d, "weight_decay", 0.0, f"{C3}:main.py:82 (Adam without weight decay)"),
            Official("c3", d, "zeta", 0.6, f"{C3}:config/config.yaml:26"),
            Official("c3", d, "instance_temperature", 1.0, f"{C3}:modules/contrastive_loss.py:7 (z z^T, undivided)"),
            Official("c3", d, "feature_dim", 128, f"{C3}:config/config.yaml:19"),
            Official("c3", d, "bn_groups", 1, f"{C3}:main.py:73 (one device: net.to('cuda'))"),
            Official("c3", d, "amp", False, f"{C3}:train.py:6-27 (fp32: no autocast)"),
            Official("c3", d, "eval_every", 1, f"{C3}:main.py:85-89 (scored before every epoch)"),
        ]
    rows.append(Official("c3", "cifar10", "train_splits", ("train", "test"), f"{C3}:main.py:45"))
    return rows


def drc_rows() -> list[Official]:
    # DRC has no official code: its paper preset is CC's official recipe (train/methods/drc.py)
    rows = cc_family_rows("drc", note=" (DRC has no official code: CC's recipe)")
    for d in CC_SETS:
        rows += [
            Official("drc", d, "backbone", "resnet34", f"{CC}:config/config.yaml:14 (DRC follows CC)"),
            Official("drc", d, "batch_size", 256, f"{CC}:config/config.yaml:7 (DRC follows CC)"),
            Official("drc", d, "lr", 3e-4, f"{CC}:config/config.yaml:20 (DRC follows CC)"),
            Official("drc", d, "amp", False, f"{CC}:train.py:11-27 (fp32: no autocast; DRC follows CC)"),
        ]
    return rows


CHC_CFG = {"cifar10": "cifar10", "cifar100": "cifar100", "stl10": "stl10", "imagenet10": "imagenet10",
           "imagenet-dogs": "imagenetdogs"}
CHC_MODEL = {"cifar10": ("resnet50", "cifar", 32), "cifar100": ("resnet50", "cifar", 32),
             "stl10": ("resnet34", "imagenet", 96), "imagenet10": ("resnet50", "imagenet", 224),
             "imagenet-dogs": ("resnet34", "imagenet", 224)}
CHC_TRANSFORM = {"cifar10": 11, "cifar100": 19, "stl10": 27, "imagenet10": 35, "imagenet-dogs": 43}
"""utils.py: each data set's RandomResizedCrop line; ColorJitter is 2 lines on, RandomGrayscale 3, Normalize 5."""
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHC_NORMALIZE = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD),
                 "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
                 "stl10": (CIFAR10_MEAN, (0.2471, 0.2435, 0.2616)),  # CIFAR-10's mean, as the file writes it
                 "imagenet10": (IMAGENET_MEAN, IMAGENET_STD), "imagenet-dogs": (IMAGENET_MEAN, IMAGENET_STD)}
CHC_TREE = {"cifar10": (4, 6, 512), "cifar100": (5, 12, 512), "stl10": (4, 6, 512), "imagenet10": (4, 6, 128),
            "imagenet-dogs": (4, 1, 128)}
CHC_SPLITS = {"cifar10": (("train",), ("test",), "utils.py:91", "utils.py:100"),
              "cifar100": (("train",), ("test",), "utils.py:92", "utils.py:101"),
              "stl10": (("unlabelled",), ("test",), "utils.py:93 (split='unlabeled')", "utils.py:102")}


def cohiclust_rows() -> list[Official]:
    rows = []
    for d, name in CHC_CFG.items():
        cfg = f"{CHC}:cfg/{name}.yaml"
        backbone, stem, size = CHC_MODEL[d]
        depth, prune, batch = CHC_TREE[d]
        crop = CHC_TRANSFORM[d]
        rows += [
            Official("cohiclust", d, "backbone", backbone, f"{cfg}:2"),
            Official("cohiclust", d, "stem", stem, f"{cfg}:3 (receptive_field_incrased: {stem == 'cifar'}; "
                                                   f"{CHC}:model.py:26-33)"),
            Official("cohiclust", d, "image_size", size, f"{CHC}:utils.py:{crop} (RandomResizedCrop({size}))"),
            Official("cohiclust", d, "depth", depth, f"{cfg}:8 (tree_level)"),
            Official("cohiclust", d, "prune", prune, f"{cfg}:18 (leaves_to_prune)"),
            Official("cohiclust", d, "batch_size", batch, f"{cfg}:15"),
            Official("cohiclust", d, "epochs", 1500, f"{cfg}:14"),
            Official("cohiclust", d, "simclr_epochs", 1000, f"{cfg}:16 (pretraining_epochs; {CHC}:main.py:43)"),
            Official("cohiclust", d, "prune_start_epoch", 1051,
                     f"{cfg}:17 (start_pruning_epochs 1050; {CHC}:main.py:62 prunes at the end of epochs "
                     "1051..1050 + prune)"),
            Official("cohiclust", d, "temperature", 0.5, f"{cfg}:10"),
            Official("cohiclust", d, "feature_dim", 128, f"{cfg}:12"),
            Official("cohiclust", d, "hidden_dim", 512, f"{CHC}:model.py:36"),
            Official("cohiclust", d, "optimizer", "adam", f"{CHC}:main.py:175"),
            Official("cohiclust", d, "lr", 1e-3, f"{CHC}:main.py:175"),
            Official("cohiclust", d, "weight_decay", 1e-6, f"{CHC}:main.py:175"),
            Official("cohiclust", d, "colour_jitter", (0.4, 0.4, 0.4, 0.1), f"{CHC}:utils.py:{crop + 2}"),
            Official("cohiclust", d, "jitter_p", 0.8, f"{CHC}:utils.py:{crop + 2}"),
            Official("cohiclust", d, "jitter_order", "random", f"{CHC}:utils.py:{crop + 2} (torchvision ColorJitter)"),
            Official("cohiclust", d, "gray_p", 0.2, f"{CHC}:utils.py:{crop + 3}"),
            Official("cohiclust", d, "blur_p", 0.0, f"{CHC}:utils.py:{crop}-{crop + 5} (no blur)"),
            Official("cohiclust", d, "normalize", True, f"{CHC}:utils.py:{crop + 5}"),
            Official("cohiclust", d, "normalize_mean", CHC_NORMALIZE[d][0], f"{CHC}:utils.py:{crop + 5}"),
            Official("cohiclust", d, "normalize_std", CHC_NORMALIZE[d][1], f"{CHC}:utils.py:{crop + 5}"),
            Official("cohiclust", d, "bn_groups", 1, f"{CHC}:main.py:168 (one device: Model(cfg=cfg).cuda())"),
            Official("cohiclust", d, "amp", False, f"{CHC}:main.py:20-68 (fp32: no autocast)"),
        ]
        if d in CHC_SPLITS:
            train, evaluated, train_line, eval_line = CHC_SPLITS[d]
            rows += [Official("cohiclust", d, "train_splits", train, f"{CHC}:{train_line}"),
                     Official("cohiclust", d, "eval_splits", evaluated, f"{CHC}:{eval_line} (tree evaluated on the "
                                                                        f"test loader, main.py:88-127)")]
    return rows


PP_CFG = {"cifar10": "config/cifar10_r18_propos.yml", "cifar100": "config/cifar20_r18_propos.yml",
          "imagenet-dogs": "config/imagenetdogs_r34_propos.yml"}
PP_LINES = {  # per config file: the lines of batch_size, momentum_increase, encoder_name, img_size, learning_rate,
    # use_gaussian_blur, warmup_epochs, weight_decay, epochs, feat_dim, hidden_size, lambda_predictor_lr,
    # temperature, cluster_loss_weight, latent_std, momentum_base, learning_eta_min, num_devices, shuffling_bn,
    # symmetric, v2 (None: not set, the default false of models/propos/byol.py:83)
    "cifar10": dict(batch=1, ema=4, encoder=11, img=15, lr=17, blur=25, warmup=26, wd=27, epochs=12, feat=13,
                    hidden=14, pred_lr=16, temp=24, weight=31, std=32, base=3, eta=18, devices=2, shuffle=22,
                    symmetric=23, v2=None),
    "cifar100": dict(batch=1, ema=5, encoder=12, img=16, lr=18, blur=26, warmup=27, wd=28, epochs=13, feat=14,
                     hidden=15, pred_lr=17, temp=25, weight=34, std=35, base=3, eta=19, devices=2, shuffle=23,
                     symmetric=24, v2=31),
    "imagenet-dogs": dict(batch=1, ema=5, encoder=12, img=17, lr=19, blur=28, warmup=29, wd=30, epochs=13, feat=14,
                          hidden=15, pred_lr=18, temp=26, weight=38, std=39, base=3, eta=20, devices=2, shuffle=24,
                          symmetric=25, v2=33),
}
PP_NORMALIZE = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD, "295 ('cifar10')"),
                "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), "296 ('cifar20')"),
                "imagenet-dogs": (IMAGENET_MEAN, IMAGENET_STD, "301-303 ('imagenetdogs' is not in the table: "
                                                                "ImageNet's, line 298)")}
"""models/basic_template.py normalize_params by the config's `dataset`."""
PP_MODEL = {"cifar10": ("resnet18", "cifar", 32, 512, 0.1, "constant", False, 0.0),
            "cifar100": ("resnet18", "cifar", 32, 256, 0.05, "cosine", True, 0.0),
            "imagenet-dogs": ("resnet34", "imagenet", 224, 256, 0.05, "cosine", True, 0.5)}
PP_RESAMPLE = {"cifar10": " (no data_resample)", "cifar100": ":30", "imagenet-dogs": ":32"}
PP_WHOLE = {"cifar10": 10, "cifar100": 11}  # whole_dataset: true -> train and test together
PP_ENCODER = {"resnet18": "network/__init__.py:14 (bigresnet18: cifar=True, network/resnet.py:74-78)",
              "resnet34": "network/__init__.py:19 (resnet34: torchvision's, 7x7/2 + max-pool)"}


def propos_rows() -> list[Official]:
    rows = []
    for d, file in PP_CFG.items():
        cfg, line = f"{PROPOS}:{file}", PP_LINES[d]
        backbone, stem, size, batch, lr, ema, resample, blur = PP_MODEL[d]
        template = f"{PROPOS}:models/basic_template.py"
        rows += [
            Official("propos", d, "backbone", backbone, f"{cfg}:{line['encoder']}; {PROPOS}:{PP_ENCODER[backbone]}"),
            Official("propos", d, "stem", stem, f"{cfg}:{line['encoder']}; {PROPOS}:{PP_ENCODER[backbone]}"),
            Official("propos", d, "image_size", size, f"{cfg}:{line['img']}"),
            Official("propos", d, "batch_size", batch, f"{cfg}:{line['batch']}-2 (per device x num_devices 4)"),
            Official("propos", d, "lr", lr, f"{cfg}:{line['lr']} (0.05) x batch / 256 ({template}:33)"),
            Official("propos", d, "ema_schedule", ema, f"{cfg}:{line['ema']} (momentum_increase; "
                                                       f"{PROPOS}:models/propos/byol.py:133-136)"),
            Official("propos", d, "ema_momentum", 0.996, f"{cfg}:{line['base']}"),
            Official("propos", d, "resample", resample, f"{cfg}{PP_RESAMPLE[d]}; {template}:549-554"),
            Official("propos", d, "blur_p", blur, f"{cfg}:{line['blur']}; {template}:258-261 (p 0.5, kernel 23)"),
            Official("propos", d, "epochs", 1000, f"{cfg}:{line['epochs']}"),
            Official("propos", d, "warmup_epochs", 50, f"{cfg}:{line['warmup']}"),
            Official("propos", d, "psl_warmup_epochs", 50,
                     f"{cfg}:{line['warmup']}; {PROPOS}:models/propos/byol.py:100"),
            Official("propos", d, "schedule", "cosine", f"{template}:449-461"),
            Official("propos", d, "cosine_epochs", 1000, f"{template}:460 (cos((epoch - warmup) pi / epochs))"),
            Official("propos", d, "lr_min", 0.0, f"{cfg}:{line['eta']} (learning_eta_min)"),
            Official("propos", d, "weight_decay", 5e-4, f"{cfg}:{line['wd']}"),
            Official("propos", d, "optimizer", "sgd", f"{PROPOS}:models/propos/byol.py:46-48"),
            Official("propos", d, "momentum", 0.9, f"{template}:71"),
            Official("propos", d, "feature_dim", 256, f"{cfg}:{line['feat']}"),
            Official("propos", d, "hidden_dim", 4096, f"{cfg}:{line['hidden']}"),
            Official("propos", d, "predictor_lr_scale", 10.0, f"{cfg}:{line['pred_lr']}; "
                                                             f"{PROPOS}:models/propos/byol.py:123"),
            Official("propos", d, "psl_temperature", 0.5, f"{cfg}:{line['temp']}"),
            Official("propos", d, "psl_weight", 0.1, f"{cfg}:{line['weight']}"),
            Official("propos", d, "noise_sigma", 0.001, f"{cfg}:{line['std']}"),
            Official("propos", d, "crop_min_scale", 0.08, f"{template}:99"),
            Official("propos", d, "colour_jitter", (0.4, 0.4, 0.4, 0.1), f"{template}:254"),
            Official("propos", d, "jitter_p", 0.8, f"{template}:255"),
            Official("propos", d, "jitter_order", "random", f"{template}:254 (torchvision ColorJitter)"),
            Official("propos", d, "gray_p", 0.2, f"{template}:256"),
            Official("propos", d, "normalize", True, f"{template}:263"),
            Official("propos", d, "kmeans_restarts", 40,
                     f"{KMEANS}:torch_clustering/kmeans/kmeans.py:25 (n_init 10), 74-75 (distributed, "
                     f"{template}:491: n_init on each of the 4 processes of {cfg}:{line['devices']}, seeds 0-39)"),
            Official("propos", d, "kmeans_restart_seeds", True,
                     f"{KMEANS}:torch_clustering/kmeans/kmeans.py:74-84 (restart i seeded random_state + i; "
                     f"{template}:492 random_state 0), kmeans_plus_plus.py:75-76"),
            Official("propos", d, "kmeans_sample_per_cluster", 0,
                     f"{KMEANS}:torch_clustering/kmeans/kmeans.py:82-109 (every restart on all points X)"),
            Official("propos", d, "kmeans_iters", 300, f"{template}:496"),
            Official("propos", d, "bn_groups", 4, f"{cfg}:{line['devices']} (num_devices: 4), "
                                                  f"{PROPOS}:models/propos/byol.py:35 (no syncbn)"),
            Official("propos", d, "shuffling_bn", True, f"{cfg}:{line['shuffle']}"),
            Official("propos", d, "amp", False, f"{PROPOS}:models/basic_template.py:72 (--amp store_true, not set in "
                                               f"{cfg}), models/propos/byol.py:103"),
            Official("propos", d, "symmetric", True, f"{cfg}:{line['symmetric']}"),
            Official("propos", d, "v2", line["v2"] is not None,
                     f"{cfg}:{line['v2']}" if line["v2"] else f"{PROPOS}:models/propos/byol.py:83 (store_true; "
                                                              f"{file} does not set it)"),
            Official("propos", d, "test_resized_crop", d == "imagenet-dogs",
                     f"{cfg}:35" if d == "imagenet-dogs" else f"{template}:98 (store_true; {file} does not set it)"),
            Official("propos", d, "normalize_mean", PP_NORMALIZE[d][0], f"{template}:{PP_NORMALIZE[d][2]}"),
            Official("propos", d, "normalize_std", PP_NORMALIZE[d][1], f"{template}:{PP_NORMALIZE[d][2]}"),
        ]
        if d in PP_WHOLE:
            rows.append(Official("propos", d, "train_splits", ("train", "test"),
                                 f"{cfg}:{PP_WHOLE[d]} (whole_dataset); {template}:196-200"))
    return rows


TABLE = [*cc_rows(), *c3_rows(), *drc_rows(), *cohiclust_rows(), *propos_rows()]


def resolved(method: str, dataset: str, field: str) -> Any:
    cfg = make_config(method, dataset=dataset, preset="paper")
    if field in DERIVED:
        return DERIVED[field][0](cfg)
    return getattr(cfg, field)


def agrees(row: Official) -> bool:
    got = resolved(row.method, row.dataset, row.field)
    if isinstance(row.value, float) and not isinstance(row.value, bool):
        return got == pytest.approx(row.value, rel=1e-9)
    if isinstance(row.value, tuple) and row.value and isinstance(row.value[0], float):
        return got == pytest.approx(row.value, rel=1e-9)
    return got == row.value


def test_the_table_covers_every_point_of_the_issue():
    keys = {(r.method, r.dataset, r.field) for r in TABLE}
    assert len(keys) == len(TABLE), "a row is listed twice"
    for method in ("cc", "c3", "drc"):  # 224 px, ImageNet stem, ResNet-34 everywhere
        for d in CC_SETS:
            assert {(method, d, f) for f in ("image_size", "stem", "backbone")} <= keys
    assert ("cc", "stl10", "instance_splits") in keys and ("cc", "tiny-imagenet", "train_splits") in keys
    for d in ("cifar100", "imagenet-dogs"):
        assert {("propos", d, f) for f in ("batch_size", "lr", "ema_schedule", "resample", "cosine_epochs")} <= keys
    assert {("cohiclust", d, f) for d in CHC_CFG for f in ("backbone", "stem", "image_size")} <= keys
    assert ("cohiclust", "stl10", "train_splits") in keys
    # issue 26: the training step's settings, the normalisation constants and the E-step's k-means
    step = ("v2", "symmetric", "shuffling_bn", "test_resized_crop", "bn_groups", "normalize_mean", "normalize_std",
            "kmeans_restarts", "kmeans_restart_seeds", "kmeans_sample_per_cluster")
    assert {("propos", d, f) for d in PP_CFG for f in step} <= keys
    assert {("cohiclust", d, f) for d in CHC_CFG for f in ("normalize_mean", "normalize_std", "bn_groups")} <= keys
    assert {(m, d, "bn_groups") for m in ("cc", "c3") for d in CC_SETS} <= keys
    assert {(m, d, "amp") for m in ("cc", "c3", "drc") for d in CC_SETS} <= keys  # fp32, as every official code
    assert {("cohiclust", d, "amp") for d in CHC_CFG} | {("propos", d, "amp") for d in PP_CFG} <= keys


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.id)
def test_paper_preset_is_the_official_value(row: Official):
    assert agrees(row), (f"{row.method} on {row.dataset}: {row.field} = "
                         f"{resolved(row.method, row.dataset, row.field)!r}, official {row.value!r} ({row.source})")


ALTERNATIVE = {"imagenet": "cifar", "cifar": "imagenet", "resnet18": "resnet34", "resnet34": "resnet50",
               "resnet50": "resnet18", "adam": "sgd", "sgd": "adam", "constant": "cosine", "cosine": "constant",
               "random": "fixed"}


def changed(cfg: Config, field: str) -> Any:
    """Another value for the config field `field` than the resolved one (for the drift test)."""
    value = getattr(cfg, field)
    if isinstance(value, bool):
        return not value
    if field in ("batch_size", "bn_groups"):  # another that still splits into the BatchNorm groups
        return value * 2
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if field == "instance_splits":
        return "" if value else "train"
    if field.startswith("normalize_"):
        return "0.5,0.5,0.5"
    if field.endswith("_splits"):  # another valid choice: every split, or else the first alone
        every = DATASETS[cfg.dataset].splits
        return ",".join(every) if DERIVED[field][0](cfg) != every else every[0]
    return ALTERNATIVE[value]


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.id)
def test_changing_the_value_in_the_preset_fails(row: Official, monkeypatch):
    cls = get_method(row.method)
    field = DERIVED[row.field][1] if row.field in DERIVED else row.field
    presets = copy.deepcopy(cls.PRESETS)
    layer = presets["paper"].setdefault(row.dataset, {})
    layer[field] = changed(make_config(row.method, dataset=row.dataset, preset="paper"), field)
    monkeypatch.setattr(cls, "PRESETS", presets)
    try:
        assert not agrees(row)
    except ValueError:  # refused outright: the project knows only the official value (ProPos's symmetric loss)
        assert row.field == "symmetric"


DIGITS = {  # the recipes of the README's digits figures (this project's own; no official code runs digits)
    "cc": dict(backbone="smallcnn", image_size=16, epochs=300, lr=3e-4, batch_size=256, jitter_order="fixed"),
    "c3": dict(backbone="smallcnn", image_size=16, epochs=20, lr=1e-5, batch_size=256, jitter_order="fixed"),
    "drc": dict(backbone="smallcnn", image_size=16, epochs=80, lr=1e-3, batch_size=256, balance_weight=0.2),
    "cohiclust": dict(backbone="smallcnn", image_size=16, epochs=90, simclr_epochs=0, prune_start_epoch=60,
                      batch_size=128),
    "propos": dict(backbone="smallcnn", image_size=16, epochs=60, lr=0.05, batch_size=128, ema_momentum=0.99,
                   hidden_dim=512, cosine_epochs=0),
}


@pytest.mark.parametrize("method", sorted(DIGITS))
def test_the_digits_presets_stay_the_measured_recipes(method: str):
    cfg = make_config(method, dataset="digits", preset="paper")
    assert {k: getattr(cfg, k) for k in DIGITS[method]} == DIGITS[method]
    assert cfg.stored_side() == 16  # no resize on the device: the pipeline the figures were measured with


# --- the normalisation constants reach the model ----------------------------------------------------


def test_the_constants_standardise_the_models_input(tmp_path):
    """With normalize_mean/std the model standardises with them, not with the data's statistics (digits: mean
    about 0.3); they are the model's buffers, so export and the gateway use them too."""
    import torch

    from tests.support.runs import tiny_config
    from train.checkpoint import checkpoint_path, read_checkpoint
    from train.trainer import train

    train(tiny_config("cc", tmp_path, epochs=1, normalize=True, normalize_mean="0.25", normalize_std="0.5"))
    model = read_checkpoint(checkpoint_path(tmp_path))["model"]
    assert torch.equal(model["backbone.standardize.mean"].flatten(), torch.tensor([0.25]))
    assert torch.equal(model["backbone.standardize.std"].flatten(), torch.tensor([0.5]))


@pytest.mark.parametrize("constants, message", [
    (dict(normalize_mean="0.5,x,0.5", normalize_std="0.2,0.2,0.2"), "comma-separated numbers"),
    (dict(normalize_mean="0.5,0.5,0.5"), "together"),
    (dict(normalize_mean="0.5,0.5,0.5", normalize_std="0.2,0.2"), "channels"),
    (dict(normalize_mean="0.5", normalize_std="0"), "positive"),
])
def test_bad_constants_are_refused_when_the_config_is_made(constants, message):
    with pytest.raises(ValueError, match=message):
        make_config("cc", dataset="cifar10", preset="paper", **constants)


def test_constants_of_another_channel_count_are_refused(tmp_path):
    from tests.support.runs import tiny_config
    from train.trainer import train

    cifar10 = dict(normalize_mean="0.4914,0.4822,0.4465", normalize_std="0.2023,0.1994,0.2010")
    with pytest.raises(ValueError, match="3 values for 1-channel images"):
        train(tiny_config("cc", tmp_path, epochs=1, normalize=True, **cifar10))  # digits: one channel
