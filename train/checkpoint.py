"""Checkpoints: written atomically (fsync'd before the rename), loaded safely (weights_only), refused with
a clear message if foreign."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contract.files import atomic_open
from contract.names import CHECKPOINT_FILE
from train.config import Config, config_from_dict
from train.methods.base import ClusteringMethod

FORMAT = "deepcluster-serve/1"
_REQUIRED = ("format", "method", "config", "meta", "model", "epoch")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename: a crash never leaves half a file."""
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)


def checkpoint_path(path: str | Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file (FileNotFoundError names both)."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file} (expected a run directory holding "
                                f"{CHECKPOINT_FILE}, or a checkpoint file)")
    return file


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint of this project (tensors and plain data only)."""
    file = checkpoint_path(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise ValueError(f"{file} is not a readable checkpoint of this project: {exc}") from exc
    missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
    if missing or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{file} is not a checkpoint of this project (format {FORMAT!r}); "
                         f"missing {missing or 'nothing'}, found format {found!r}")
    return state


@dataclass
class LoadedRun:
    model: ClusteringMethod  # in eval mode, on the CPU
    config: Config
    meta: dict[str, Any]     # in_channels, num_clusters, class_names, dataset, image_size
    epoch: int
    path: Path


def build_model(method: str, config: Config, meta: dict[str, Any]) -> ClusteringMethod:
    from train.methods import get_method  # the registry's methods import this package's modules

    return get_method(method)(config, meta["in_channels"], meta["num_clusters"])


def load_run(path: str | Path) -> LoadedRun:
    """Rebuild a trained model from a run directory or checkpoint file."""
    from train.methods import get_method

    state = read_checkpoint(path)
    config = config_from_dict(get_method(state["method"]).Config, state["config"])
    model = build_model(state["method"], config, state["meta"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:  # keys or shapes differ: the checkpoint's weights are not this method's
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
        raise ValueError(f"{checkpoint_path(path)}: its weights do not fit a {state['method']} model with its own "
                         f"config ({first.strip()[:300]})") from err
    return LoadedRun(model.eval(), config, state["meta"], state["epoch"], checkpoint_path(path))
