"""Starting a run from another method's finished run: the trainer's side of a method's `parent`.

C3 declares `parent = "cc"`: a fresh C3 run loads the weights of a finished CC run of the same data
set and architecture. Which run: `--init` (a run directory or checkpoint), else the newest finished
parent run under the runs root whose config agrees on the data set and on every architecture field
(train/config.py `architecture_fields`, read off the config dataclasses). With none, the run stops
before any work (exit 2) and says the exact command that trains the parent, unless
`--train-parent true` asks to train it first.

The trainer calls `resolve_parent` while it sets a fresh run up (before any data is read) and
`load_parent` while it restores the model; it hands `resolve_parent` its own `train` for training the
parent first, so this module never imports the trainer.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.cli import option_name
from contract.runs import finished_runs
from train.checkpoint import checkpoint_path, read_checkpoint
from train.config import Config, architecture_fields, option_value


class ParentRunMissing(Exception):
    """No finished parent run exists; the message holds the command that trains one."""


def matching_fields(cfg: Config, parent_cls: type[Config]) -> dict[str, Any]:
    """What a parent run's config must agree on: the data set and the parent's architecture fields."""
    return {"dataset": cfg.dataset, **{k: getattr(cfg, k) for k in architecture_fields(parent_cls) if hasattr(cfg, k)}}


def parent_config(cfg: Config, parent: str, run_dir: Path) -> Config:
    """The parent run a config needs: the parent's own preset, with the child's data, seed and architecture."""
    from train.methods import get_method, make_config

    carried = {"dataset": cfg.dataset, "data_dir": cfg.data_dir, "preset": cfg.preset, "seed": cfg.seed,
               **matching_fields(cfg, get_method(parent).Config),
               **{k: getattr(cfg, k) for k in ("device", "threads", "progress", "amp", "channels_last", "compile")}}
    return make_config(parent, run_dir=str(run_dir), **carried)


def parent_command(cfg: Config, parent: str, run_dir: Path) -> str:
    """The `python -m train` command that trains the parent run `cfg` needs, with only the options it must set."""
    from train.methods import make_config

    wanted = parent_config(cfg, parent, run_dir)
    defaults = {f.name: f.default for f in dataclasses.fields(wanted)}
    plain = make_config(parent, dataset=cfg.dataset, preset=cfg.preset)  # what the preset alone resolves to
    args = ["python", "-m", "train", "--method", parent, "--dataset", cfg.dataset]
    for key in ("preset", "data_dir", "seed"):
        if getattr(wanted, key) != defaults[key]:
            args += [option_name(key), option_value(getattr(wanted, key))]
    for key in matching_fields(cfg, type(wanted)):
        if key != "dataset" and getattr(wanted, key) != getattr(plain, key):
            args += [option_name(key), option_value(getattr(wanted, key))]
    return shlex.join([*args, "--run-dir", str(run_dir)])


def find_parent(cfg: Config, parent: str, runs_root: Path) -> Path | None:
    """The checkpoint a fresh run of `cfg` starts from: --init, else the newest matching finished run."""
    from train.methods import get_method

    if cfg.init:
        return checkpoint_path(cfg.init)
    where = {"method": parent, **matching_fields(cfg, get_method(parent).Config)}
    runs = finished_runs(runs_root, where)
    return runs[0].checkpoint if runs else None


def check_parent_checkpoint(file: Path, state: dict[str, Any], cfg: Config, parent: str, num_clusters: int) -> None:
    """ValueError unless the checkpoint is the parent method's with our data set and architecture."""
    from train.methods import get_method

    theirs = {**state["config"], **state["meta"]}
    ours = {**matching_fields(cfg, get_method(parent).Config), "num_clusters": num_clusters}
    differ = [k for k in ours if theirs.get(k) != ours[k]]
    if state["method"] == parent and not differ:
        return
    shown = ["backbone", "num_clusters"]
    if state["method"] == parent:  # another method's config has other fields: only say what it is
        shown += [k for k in differ if k not in shown]
    raise ValueError(f"{file} is a {state['method']} checkpoint ({_describe(theirs, shown)}); "
                     f"{cfg.method} needs a {parent} checkpoint with {_describe(ours, shown)}")


def _describe(values: dict[str, Any], keys: list[str]) -> str:
    names = {"backbone": "{}", "num_clusters": "{} clusters", "feature_dim": "{}-d embeddings",
             "image_size": "{} px images"}
    return ", ".join(names.get(k, k + " {}").format(values.get(k)) for k in keys)


def resolve_parent(cfg: Config, parent: str, run_dir: Path, log: Callable[[str], None],
                   train: Callable[[Config], object]) -> Path:
    """The parent checkpoint for a fresh run in run_dir; only with --train-parent, `train` trains the parent first."""
    root = run_dir.parent
    found = find_parent(cfg, parent, root)
    if found is not None:
        if not cfg.init:
            log(f"{cfg.method}: starting from the latest finished {parent} run {found.parent}")
        return found
    parent_dir = root / f"{parent}-{cfg.dataset}-{cfg.backbone}"
    command = parent_command(cfg, parent, parent_dir)
    if not cfg.train_parent:
        raise ParentRunMissing(
            f"{cfg.method} fine-tunes a finished {parent} run, and there is none of {cfg.dataset} with this "
            f"architecture under {root}/. Train it first:\n    {command}\nthen run this command again "
            f"(or give --init RUN_DIR, or add --train-parent true to train it as part of this run)")
    parent_cfg = parent_config(cfg, parent, parent_dir)
    log(f"{cfg.method}: no finished {parent} run under {root}/: training it first ({parent_cfg.epochs} epochs) "
        f"as `{command}`")
    train(parent_cfg)
    return checkpoint_path(parent_dir)


def load_parent(model, file: Path, cfg: Config, parent: str) -> dict[str, Any]:
    """Load the parent checkpoint into model after checking it; returns what init.json records."""
    state = read_checkpoint(file)
    check_parent_checkpoint(file, state, cfg, parent, model.num_clusters)
    model.load_parent(state["model"])
    return {"checkpoint": str(file), "method": parent, "epoch": state["epoch"]}

