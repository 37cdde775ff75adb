"""contract.runs: which runs are finished, and the newest one matching a filter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from contract.runs import finished_runs, is_finished, latest_finished_run, read_run


def _run(root: Path, name: str, finished: bool | None, mtime: float, checkpoint: bool = True, **config) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if checkpoint:
        (d / "last.pt").write_bytes(b"")
    (d / "config.json").write_text(json.dumps({"method": "cc", "dataset": "digits", **config}))
    if finished is not None:
        (d / "results.json").write_text(json.dumps({"finished": finished}))
        os.utime(d / "results.json", (mtime, mtime))
    return d


def test_latest_finished_run_is_the_newest_finished_one_anywhere_below(tmp_path):
    _run(tmp_path, "old", True, 1_000)
    newest = _run(tmp_path, "deeper/new", True, 2_000)
    _run(tmp_path, "newer-but-unfinished", False, 3_000)
    _run(tmp_path, "no-checkpoint", True, 4_000, checkpoint=False)
    _run(tmp_path, "still-training", None, 5_000)
    assert latest_finished_run(tmp_path) == newest
    assert [r.path.name for r in finished_runs(tmp_path)] == ["new", "old"]
    assert is_finished(newest) and not is_finished(tmp_path / "newer-but-unfinished")
    assert read_run(newest / "last.pt").path == newest  # a checkpoint file names its run


def test_filters_match_the_runs_config(tmp_path):
    _run(tmp_path, "a", True, 1_000, backbone="smallcnn")
    b = _run(tmp_path, "b", True, 2_000, backbone="resnet18")
    assert latest_finished_run(tmp_path, {"backbone": "smallcnn"}) == tmp_path / "a"
    assert latest_finished_run(tmp_path, {"method": "cc"}) == b
    with pytest.raises(FileNotFoundError, match="no finished run under .* with method=drc"):
        latest_finished_run(tmp_path, {"method": "drc"})


def test_a_broken_results_file_is_an_unfinished_run(tmp_path):
    d = _run(tmp_path, "r", True, 1_000)
    (d / "results.json").write_text("{not json")
    assert not is_finished(d)
    with pytest.raises(FileNotFoundError):
        latest_finished_run(tmp_path)
