"""Atomic file writes: a reader (or a crash) never sees half a file.

The data goes to a temporary file in the same directory, is flushed and fsync'd, then renamed over
the target; the directory is fsync'd after the rename so the new name survives a power loss.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

T = TypeVar("T")


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside directory `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with mode 0o666 honours the umask (mkstemp would leave the file owner-only).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def jsonable(obj: Any) -> Any:
    """numpy arrays and scalars, tuples and Paths -> plain JSON values (recursively)."""
    if isinstance(obj, dict):
        return {jsonable(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write obj as JSON (indent 2, trailing newline)."""
    write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; ValueError names the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def read_record(path: str | Path, parse: Callable[[Any, str], T], what: str) -> T:
    """A JSON file through a record's `from_json(data, source)`; ValueError names the file for any failure."""
    path = Path(path)
    try:
        data = read_json(path)
    except OSError as err:
        raise ValueError(f"{path}: cannot read {what}: {err.strerror or err}") from err
    return parse(data, str(path))
