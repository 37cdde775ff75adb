"""Typed run configuration: defaults < method preset < data-set defaults < method's data-set preset < CLI.

Each method subclasses `Config` with its own hyper-parameters and declares presets
(`paper`: the official code's recipe per data set, `fast`: a short schedule for a quick look; a method
may add others, e.g. `native`: the project's faster recipe at the data set's native resolution).
The resolved config is saved in the run directory as config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from contract import files
from contract.cli import add_dataclass_arguments, option_name

Presets = dict[str, dict[str, dict[str, Any]]]
"""preset name -> data set name (or "*" for every data set) -> field overrides."""
REQUIRED_PRESETS = ("paper", "fast")
"""Every method has these: `paper` is the official code's recipe, `fast` a short schedule."""


EVAL_CROP = 224 / 256
"""torchvision's ImageNet evaluation, Resize(256) + CenterCrop(224), as the fraction of the side it keeps."""
ARCHITECTURE = {"architecture": True}
"""Field metadata of the fields that shape the model's weights."""


def architecture_fields(cls: type[Config]) -> tuple[str, ...]:
    """Fields that shape the model's weights (metadata "architecture"): a checkpoint loads only where they agree."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("architecture"))


def schedule_point(turns_on: str | None = None, round_up: bool = False) -> dict[str, Any]:
    """Field metadata of a point of the schedule given in epochs (a warm-up, a phase's length, when pruning
    starts): it follows a shorter or longer --epochs in proportion unless set on the command line.

    Scaled points round down, so a phase that ends before the run does still ends before it; `round_up`
    for a point that must come after such a phase. `turns_on`: what starts once that many epochs are
    done (a loss): the run refuses a value >= epochs, since it would never start."""
    return {"schedule": {"turns_on": turns_on, "round_up": round_up}}


def schedule_fields(cls: type[Config]) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in fields(cls) if "schedule" in f.metadata)


@dataclass
class Config:
    # --- what to train -------------------------------------------------------------------------
    method: str = field(kw_only=True, metadata={"help": "clustering method: its registry key (train/methods)"})
    dataset: str = field(default="digits", metadata={"help": "data set name"})
    data_dir: str | None = field(
        default=None, metadata={"help": "directory holding the data set in its distributed format"}
    )
    run_dir: str | None = field(
        default=None,
        metadata={"help": "output directory; default runs/<method>-<dataset>-<backbone>. "
                  "A run started again in the same directory resumes."},
    )
    max_images: int = field(
        default=0, metadata={"help": "folders of image files: train on a seeded random sample of N images (0: all)"}
    )
    preset: str = field(
        default="paper",
        metadata={"help": "hyper-parameter preset: paper (the official code's recipe), native (the project's "
                  "recipe at the data set's native resolution, much faster) or fast (a short schedule)"},
    )
    seed: int = field(default=0, metadata={"help": "random seed (data order, augmentation, init)"})
    init: str | None = field(
        default=None,
        metadata={"help": "methods with a parent (c3: cc): the parent's run directory or checkpoint to start from; "
                  "default: the latest finished parent run of this data set and architecture under the runs root"},
    )
    train_parent: bool = field(
        default=False, metadata={"help": "methods with a parent: train the parent run first when none is found "
                                 "(otherwise the command that trains it is printed and nothing runs)"}
    )
    train_splits: str = field(
        default="", metadata={"help": "splits of the data set trained on, comma-separated (empty: the data set's "
                              "default, e.g. train,test for cifar10)"}
    )
    eval_splits: str = field(
        default="", metadata={"help": "splits clustered and scored at evaluation (empty: the training splits)"}
    )
    instance_splits: str = field(
        default="", metadata={"help": "splits given an extra pass with the instance loss only at the start of every "
                              "epoch (CC on STL-10: unlabelled); empty: none"}
    )
    # --- model ---------------------------------------------------------------------------------
    backbone: str = field(
        default="resnet34", metadata={**ARCHITECTURE, "help": "resnet18, resnet34, resnet50 or smallcnn"}
    )
    stem: str = field(
        default="cifar",
        metadata={**ARCHITECTURE, "help": "cifar (3x3 conv, no max-pool) or imagenet (7x7/2 + max-pool)"}
    )
    image_size: int = field(default=32, metadata={**ARCHITECTURE, "help": "side of the square model input, pixels"})
    stored_size: int = field(
        default=0,
        metadata={"help": "side of the images kept in memory, pixels (0 = image_size); the augmentation's crop "
                  "and the evaluation resize take them to image_size on the training device"},
    )
    num_clusters: int = field(default=0, metadata={**ARCHITECTURE, "help": "number of clusters; 0 = number of classes"})
    normalize: bool = field(
        default=False, metadata={**ARCHITECTURE, "help": "standardise inputs per channel: with normalize_mean and "
                                 "normalize_std when set, else with the data set's own mean/std"}
    )
    normalize_mean: str = field(
        default="", metadata={"help": "with normalize: fixed per-channel means, comma-separated (the official "
                              "code's constants, e.g. 0.4914,0.4822,0.4465); empty: the data set's"}
    )
    normalize_std: str = field(
        default="", metadata={"help": "with normalize: fixed per-channel standard deviations, comma-separated; "
                              "given together with normalize_mean"}
    )
    # --- optimisation --------------------------------------------------------------------------
    epochs: int = field(default=1000, metadata={"help": "training epochs"})
    batch_size: int = field(default=256, metadata={"help": "global batch size (all processes)"})
    optimizer: str = field(default="adam", metadata={"help": "adam or sgd"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    schedule: str = field(default="constant", metadata={"help": "learning-rate schedule: constant or cosine"})
    warmup_epochs: int = field(default=0, metadata={**schedule_point(), "help": "linear learning-rate warm-up epochs"})
    lr_min: float = field(default=0.0, metadata={"help": "cosine schedule: the floor, as a fraction of lr"})
    cosine_epochs: int = field(
        default=0, metadata={**schedule_point(), "help": "cosine schedule: its period after the warm-up, epochs "
                             "(0 = the rest of the run, so it ends at the floor)"}
    )
    bn_groups: int = field(
        default=1, metadata={"help": "BatchNorm statistics over this many equal slices of the batch, as an official "
                             "recipe run on that many devices without synchronised BatchNorm (1: the whole batch)"}
    )
    # --- augmentation (each image of a batch draws its own parameters) ------------------------
    crop_min_scale: float = field(default=0.08, metadata={"help": "random resized crop: smallest area"})
    flip_p: float = field(default=0.5, metadata={"help": "horizontal flip probability"})
    jitter_strength: float = field(
        default=0.5, metadata={"help": "colour jitter s: brightness/contrast/saturation 0.8s, hue 0.2s"}
    )
    jitter_p: float = field(default=0.8, metadata={"help": "colour jitter probability"})
    jitter_order: str = field(
        default="random", metadata={"help": "colour jitter order: random (a random order per image, as torchvision's "
                                    "ColorJitter) or fixed (brightness, contrast, saturation, hue)"}
    )
    gray_p: float = field(default=0.2, metadata={"help": "grayscale probability"})
    blur_p: float = field(default=0.0, metadata={"help": "Gaussian blur probability"})
    rotate_degrees: float = field(default=0.0, metadata={"help": "random rotation range, +- degrees"})
    shear_degrees: float = field(default=0.0, metadata={"help": "random shear range, +- degrees"})
    translate: float = field(default=0.0, metadata={"help": "random translation, fraction of the side"})
    elastic_alpha: float = field(
        default=0.0, metadata={"help": "elastic distortion strength, fraction of the side (0 = off)"}
    )
    test_resized_crop: bool = field(
        default=False, metadata={"help": "evaluation and the epoch hooks (k-means) see the central 224/256 of each "
                                 "image resized to the model size: torchvision's Resize(256) + CenterCrop(224) (the "
                                 "official ProPos `test_resized_crop`, ImageNet-Dogs); false: the whole image"}
    )
    # --- run control ---------------------------------------------------------------------------
    eval_every: int = field(default=10, metadata={"help": "evaluate every N epochs (0 = only at the end)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    amp: bool = field(
        default=False, metadata={"help": "bf16 autocast of the forward passes, on CUDA and on the CPU (false: fp32, as "
                                 "every official code trains)"}
    )
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format on CUDA"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    eval_batch_size: int = field(default=1024, metadata={"help": "batch size for evaluation"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = torch's default)"})
    progress: bool = field(default=True, metadata={"help": "show tqdm progress bars"})
    decode_cache: bool = field(
        default=True, metadata={"help": "keep folders of image files decoded on disk, so the next run starts at once"}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "where decoded folders are kept; default: .cache/ beside the run directory"}
    )

    def __post_init__(self) -> None:
        """Values no run can use fail here, with the option to change, before any data is read."""
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.num_clusters < 0 or self.num_clusters == 1:
            raise ValueError(f"--num-clusters must be 0 (the data set's class count) or at least 2, "
                             f"got {self.num_clusters}")
        if self.bn_groups < 1:
            raise ValueError(f"bn_groups must be >= 1, got {self.bn_groups}")
        if self.batch_size % self.bn_groups:
            raise ValueError(f"batch_size {self.batch_size} does not split into bn_groups {self.bn_groups} equal "
                             f"BatchNorm groups")
        self.normalization_constants()  # a ValueError now rather than at the first epoch

    def normalization_constants(self) -> tuple[list[float], list[float]] | None:
        """The fixed per-channel (mean, std) of normalize_mean / normalize_std, or None when they are unset
        (then `normalize` standardises with the data set's own statistics)."""
        if not self.normalize_mean and not self.normalize_std:
            return None
        if not (self.normalize_mean and self.normalize_std):
            raise ValueError("give normalize_mean and normalize_std together (or neither: the data set's statistics)")
        mean = _channel_values(self.normalize_mean, "normalize_mean")
        std = _channel_values(self.normalize_std, "normalize_std")
        if len(mean) != len(std):
            raise ValueError(f"normalize_mean has {len(mean)} channels, normalize_std {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"normalize_std must be positive, got {self.normalize_std!r}")
        return mean, std

    def eval_crop(self) -> float:
        """The fraction of each image's side, around its centre, that evaluation sees (test_resized_crop)."""
        return EVAL_CROP if self.test_resized_crop else 1.0

    def stored_side(self) -> int:
        """Side of the images kept in memory: stored_size, or image_size when it is 0."""
        return self.stored_size or self.image_size

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.method}-{self.dataset}-{self.backbone}")

    def resolved_cache_dir(self) -> Path | None:
        """Where decoded folders are cached (None: not cached); shared by the runs of one runs root."""
        if not self.decode_cache:
            return None
        return Path(self.cache_dir) if self.cache_dir else self.resolved_run_dir().parent / ".cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        files.write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _channel_values(text: str, name: str) -> list[float]:
    """"0.4914, 0.4822,0.4465" -> [0.4914, 0.4822, 0.4465]; ValueError naming the option otherwise."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, one per channel, got {text!r}") from None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[Config], resolved: Config | None = None,
                         preset_source: str = "") -> None:
    """One --option per config field but --method; unset options stay None so presets are not overridden.

    The help shows `resolved`'s value (what the run gets without the option) when given.
    """
    def describe(f: dataclasses.Field) -> str:
        if resolved is None:
            return f"default: {f.default!r}"
        value = getattr(resolved, f.name)
        return f"default: {value!r}" + (f", from {preset_source}" if value != f.default and preset_source else "")

    add_dataclass_arguments(parser, cls, describe, skip=("method",))


def option_value(value: Any) -> str:
    """A config value as the command line writes it (booleans as true/false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolve_config(cls: type[Config], presets: Presets, dataset_defaults: dict[str, Any],
                   overrides: dict[str, Any]) -> Config:
    """Build the run config: defaults < preset["*"] < data-set defaults < preset[data set] < overrides.

    When the overrides change `epochs`, the schedule points they leave out follow it in proportion
    (`scale_schedule`)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    dataset = overrides.get("dataset", cls.dataset)
    preset_name = overrides.get("preset", cls.preset)
    if preset_name not in presets:
        raise ValueError(f"unknown preset {preset_name!r}; choose from {sorted(presets)}")
    preset = presets[preset_name]
    values: dict[str, Any] = {}
    for layer in (preset.get("*", {}), dataset_defaults, preset.get(dataset, {})):
        values.update(layer)
    unknown = (set(values) | set(overrides)) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    planned = cls(**{"method": "", **values})  # what the preset plans, before the command line
    scaled = scale_schedule(planned, overrides.get("epochs", planned.epochs), keep=overrides)
    return cls(**{**values, **scaled, **overrides})


def scale_schedule(planned: Config, epochs: int, keep: Collection[str] = ()) -> dict[str, int]:
    """The schedule points of `planned` (written for planned.epochs) for a run of `epochs`, but those in `keep`:
    each point x epochs / planned.epochs, rounded down (up for `round_up` points)."""
    if epochs == planned.epochs or epochs < 1 or planned.epochs < 1:
        return {}
    out = {}
    for f in schedule_fields(type(planned)):
        if f.name not in keep:
            exact = getattr(planned, f.name) * epochs / planned.epochs
            out[f.name] = math.ceil(exact) if f.metadata["schedule"]["round_up"] else math.floor(exact)
    return out


def check_schedule(cfg: Config) -> None:
    """ValueError (one line, naming the options) when a loss of the schedule would never start."""
    for f in schedule_fields(type(cfg)):
        turns_on, value = f.metadata["schedule"]["turns_on"], getattr(cfg, f.name)
        if turns_on and cfg.epochs >= 1 and value >= cfg.epochs:
            option = option_name(f.name)
            raise ValueError(f"{option} {value} with --epochs {cfg.epochs}: {turns_on} would never start; give "
                             f"{option} below {cfg.epochs}, or leave it out to scale it with --epochs")


def describe_schedule(cfg: Config, planned: Config) -> str:
    """The run's schedule points in one line, saying which were scaled from `planned` (the preset's plan)."""
    parts = []
    for f in schedule_fields(type(cfg)):
        value, plan = getattr(cfg, f.name), getattr(planned, f.name)
        scaled = planned.epochs != cfg.epochs and value == scale_schedule(planned, cfg.epochs).get(f.name)
        parts.append(f"{f.name} {value}" + (f" (the preset's {plan} scaled)" if scaled and value != plan else ""))
    note = f", the {planned.preset} preset plans {planned.epochs}" if planned.epochs != cfg.epochs else ""
    return f"schedule: {cfg.epochs} epochs{note}; " + ", ".join(parts)


def split_names(text: str) -> tuple[str, ...]:
    """"train, test" -> ("train", "test"); empty -> ()."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def config_from_dict(cls: type[Config], values: dict[str, Any]) -> Config:
    """Rebuild a saved config; fields added since it was saved keep their defaults."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})
