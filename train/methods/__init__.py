"""Method registry: name -> method class, one file per method (README.md here: adding a method).

The registry key is the method's one name: it is what `--method` takes, what `cfg.method` holds
(set by `make_config`) and what checkpoints record. Registering checks the method's contract:
`paper` and `fast` presets whose fields all exist, a config class of its own, a known parent.
"""

from __future__ import annotations

from typing import Any

from train.batch_norm import group_batch_norms
from train.config import REQUIRED_PRESETS, Config, resolve_config
from train.data.datasets import DATASETS
from train.methods.base import ClusteringMethod
from train.methods.c3 import C3
from train.methods.cc import CC
from train.methods.cohiclust import CoHiClust
from train.methods.drc import DRC
from train.methods.propos import ProPos

METHODS: dict[str, type[ClusteringMethod]] = {
    "c3": C3,
    "cc": CC,
    "cohiclust": CoHiClust,
    "drc": DRC,
    "propos": ProPos,
}


def check_method(name: str, cls: type[ClusteringMethod]) -> None:
    """ValueError unless `cls` keeps the method contract (see train/methods/base.py)."""
    if not (isinstance(cls, type) and issubclass(cls, ClusteringMethod)):
        raise ValueError(f"method {name!r}: {cls!r} is not a ClusteringMethod subclass")
    if not issubclass(cls.Config, Config):
        raise ValueError(f"method {name!r}: Config {cls.Config!r} is not a train.config.Config subclass")
    missing = [p for p in REQUIRED_PRESETS if p not in cls.PRESETS]
    if missing:
        raise ValueError(f"method {name!r} lacks the preset(s) {missing}; every method has {list(REQUIRED_PRESETS)}")
    known = {f for f in cls.Config.__dataclass_fields__}
    for preset, layers in cls.PRESETS.items():
        for dataset, values in layers.items():
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"method {name!r}: preset {preset!r} for {dataset!r} sets unknown field(s) {unknown}")
    if cls.parent is not None and cls.parent not in METHODS:
        raise ValueError(f"method {name!r}: parent {cls.parent!r} is not a registered method")


def register(name: str, cls: type[ClusteringMethod]) -> type[ClusteringMethod]:
    """Add a method at run time (a plugin, a test); the literal METHODS above is checked at import."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    check_method(name, cls)
    METHODS[name] = cls
    return cls


def get_method(name: str) -> type[ClusteringMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def make_config(method: str, **overrides: Any) -> Config:
    """The resolved config of a run of `method`: defaults < presets < data-set defaults < overrides.

    The registry key becomes cfg.method; overrides left at None do not override anything.
    """
    cls = get_method(method)
    dataset = overrides.get("dataset") or cls.Config.dataset
    dataset_defaults = DATASETS[dataset].defaults if dataset in DATASETS else {}
    return resolve_config(cls.Config, cls.PRESETS, dataset_defaults, {**overrides, "method": method})


def build_training_model(cfg: Config, in_channels: int, num_clusters: int, mean: list[float] | None = None,
                         std: list[float] | None = None, processes: int = 1) -> ClusteringMethod:
    """cfg.method's model as training runs it on one of `processes` processes: with cfg.bn_groups > 1 every
    BatchNorm normalises bn_groups / processes equal slices of the process's batch (train/batch_norm.py), so
    the bn_groups slices of the global batch are normalised apart, as on the official run's devices."""
    model = get_method(cfg.method)(cfg, in_channels, num_clusters, mean, std)
    model.batch_groups = groups_per_process(cfg, processes)
    group_batch_norms(model, model.batch_groups)
    return model


def groups_per_process(cfg: Config, processes: int) -> int:
    """cfg.bn_groups / processes; ValueError unless it divides (BatchNorm is not synchronised across processes,
    so each process's share of the batch is at least one group of its own)."""
    if cfg.bn_groups % processes:
        raise ValueError(f"bn_groups {cfg.bn_groups} must divide by the {processes} processes: each process "
                         f"normalises its own share of the batch (BatchNorm is not synchronised), so give "
                         f"--bn-groups {processes} or a multiple")
    return cfg.bn_groups // processes


for _name, _cls in METHODS.items():
    check_method(_name, _cls)
