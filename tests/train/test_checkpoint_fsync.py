"""save_checkpoint makes the file durable before it is visible: fsync of the data, rename, fsync of the directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from train.checkpoint import read_checkpoint, save_checkpoint


def test_the_checkpoint_is_fsynced_before_the_rename_and_the_directory_after(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:  # noqa: ANN001 - os.replace's signature
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "last.pt"
    save_checkpoint({"method": "cc", "config": {}, "meta": {}, "model": {"w": torch.ones(2)}, "epoch": 3}, target)

    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "rename", "fsync"], events
    data_file, renamed, directory = (where for _, where in events)
    assert Path(data_file).parent == tmp_path and Path(data_file).name.startswith(".last.pt.")  # the temporary file
    assert renamed == str(target) and directory == str(tmp_path)
    assert read_checkpoint(target)["epoch"] == 3
