"""contract.files: atomic writes leave the old file or the new one, never half of one, and no litter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contract.files import atomic_open, read_json, write_json


def test_write_json_numpy_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    obj = {
        "acc": np.float32(0.5),
        "n": np.int64(3),
        "ok": np.bool_(True),
        "per_class": np.array([1, 2, 3]),
        "nested": [{"x": np.float64(1.25)}, (np.int32(1), "a")],
        np.int64(7): "numpy key",
        "dir": tmp_path,
    }
    write_json(path, obj)
    text = path.read_text()
    assert '\n  "acc": 0.5' in text  # indent 2
    assert json.loads(text) == {
        "acc": 0.5,
        "n": 3,
        "ok": True,
        "per_class": [1, 2, 3],
        "nested": [{"x": 1.25}, [1, "a"]],
        "7": "numpy key",
        "dir": str(tmp_path),
    }
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    # A failing write leaves the previous file untouched and no temp file behind.
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text())["n"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_an_error_inside_atomic_open_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_open(path, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with atomic_open(path, "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_read_json_names_the_broken_file(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"finished": tru')
    with pytest.raises(ValueError, match="results.json is not valid JSON"):
        read_json(tmp_path / "results.json")
