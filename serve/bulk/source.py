"""The collection to cluster, listed once into a manifest: one row per image, one row group per block.

SOURCE is a folder (searched recursively, hidden entries skipped, image extensions only), a glob
pattern, a `.txt` file with one path per line, or a `.parquet` file with a `path` column; relative
paths in a list are relative to the list's folder. Paths that pyarrow's filesystems understand
(`s3://bucket/prefix`, `gs://...`) are listed and read through `pyarrow.fs`.

The listing is deterministic (sorted per folder) and streams: at most one block of paths is in
memory, so a listing of 10^8 files takes constant memory. Block b is row group b of the manifest,
images [b * block_size, (b + 1) * block_size) of the listing, and is the unit of work and of resuming.

Paths are bytes end to end: a file name that is not UTF-8 (Linux allows any bytes) is kept exactly in
the manifest (a binary column) and opened as it is; where it is written as text (a shard's `path`,
an error message) its undecodable bytes appear as `\\xNN` (`display_path`). A listed file is read
only when it is a regular file no larger than the gateway's per-image limit (`read_listed`): a FIFO
or a device named in a list is that row's error, never a hang, and a 2 GB file is not read at all.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from contract import files
from contract.names import IMAGE_EXTENSIONS

PATH = "path"
MANIFEST_SCHEMA = pa.schema([(PATH, pa.binary())])  # the paths' bytes (os.fsencode): any file name fits


class SourceError(ValueError):
    """A SOURCE that does not exist, is of no known kind, or lists no image."""


def is_uri(path: str) -> bool:
    return "://" in path


def display_path(text: str) -> str:
    """A path (or a message naming one) as UTF-8 text: bytes of a file name that are not UTF-8 (which
    os.fsdecode keeps as lone surrogates) written as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_listed(path: str, max_bytes: int) -> bytes:
    """The bytes of one listed file; ValueError when it is no regular file (a FIFO, a device: never opened
    for a blocking read) or larger than `max_bytes` (judged from its size, and no more than max_bytes + 1
    bytes are ever read)."""
    if is_uri(path):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as stream:
            data = stream.read(max_bytes + 1)
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO does not wait for a writer
        except FileNotFoundError:
            raise ValueError("no such file") from None
        except OSError as err:
            raise ValueError(f"cannot read: {err.strerror or err}") from None
        with os.fdopen(fd, "rb") as f:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise ValueError("not a regular file (a FIFO, socket or device is not read)")
            if status.st_size > max_bytes:
                raise ValueError(f"{status.st_size:,} bytes, more than the limit of {max_bytes:,} per image")
            data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"more than the limit of {max_bytes:,} bytes per image")
    return data


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_folder(root: Path) -> Iterator[str]:
    """Image files under root in a fixed order: each folder's entries sorted by name, depth first.

    Symbolic links to files are listed; links to folders are not followed (a link cycle cannot loop)."""
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
            elif _is_image(entry.name) and entry.is_file():
                yield entry.path
        stack.extend(reversed(subfolders))  # popped in name order


def _walk_uri(uri: str) -> Iterator[str]:
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.NotFound:
        raise SourceError(f"{uri} does not exist")
    if info.type == fs.FileType.File:
        yield uri
        return
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    for entry in sorted((f for f in found if f.type == fs.FileType.File and _is_image(f.base_name)),
                        key=lambda f: f.path):
        yield f"{scheme}://{entry.path}"


def _resolve(entry: str, base: Path) -> str:
    return entry if is_uri(entry) or os.path.isabs(entry) else str(base / entry)


def _text_list(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # a line's bytes are a file's name
        for line in f:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield _resolve(entry, path.parent)


def _parquet_list(path: Path) -> Iterator[str]:
    table_file = pq.ParquetFile(path)
    if PATH not in table_file.schema_arrow.names:
        raise SourceError(f"{path} has no {PATH!r} column (columns: {table_file.schema_arrow.names})")
    for batch in table_file.iter_batches(columns=[PATH], batch_size=65536):
        for entry in batch.column(0).to_pylist():
            if entry:
                yield _resolve(os.fsdecode(entry), path.parent)  # a string or a binary column


def list_source(source: str) -> Iterator[str]:
    """The image paths SOURCE names, in a fixed order; SourceError when SOURCE is none of the known kinds."""
    if is_uri(source):
        return _walk_uri(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return walk_folder(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        return _text_list(path)
    if path.is_file() and path.suffix.lower() == ".parquet":
        return _parquet_list(path)
    if glob.has_magic(source):
        return iter(sorted(p for p in glob.iglob(os.path.expanduser(source), recursive=True) if os.path.isfile(p)))
    if path.exists():
        raise SourceError(f"{source} is a file but not a .txt or .parquet list of paths")
    raise SourceError(f"{source} does not exist (give a folder, a glob, a .txt or .parquet list, or a URI)")


def write_manifest(paths: Iterator[str], manifest: Path, block_size: int, source: str) -> int:
    """Write the listing `paths` of SOURCE to `manifest` (Parquet, row group b = block b); returns its length.

    Written atomically: a listing interrupted half-way leaves no manifest and is simply done again.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    count = 0
    with files.atomic_open(manifest, "wb") as f, pq.ParquetWriter(f, MANIFEST_SCHEMA) as writer:
        block: list[bytes] = []
        for entry in paths:
            block.append(os.fsencode(entry))
            if len(block) == block_size:
                writer.write_table(pa.table({PATH: block}, schema=MANIFEST_SCHEMA), row_group_size=block_size)
                count += len(block)
                block = []
        if block:
            writer.write_table(pa.table({PATH: block}, schema=MANIFEST_SCHEMA), row_group_size=block_size)
            count += len(block)
        if count == 0:
            raise SourceError(f"{source} lists no image (extensions looked for: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return count


class Manifest:
    """Reads the blocks of a manifest; the footer is parsed once (workers keep one open)."""

    def __init__(self, path: str | Path) -> None:
        self.file = pq.ParquetFile(path)

    @property
    def num_blocks(self) -> int:
        return self.file.num_row_groups

    @property
    def num_images(self) -> int:
        return self.file.metadata.num_rows

    def block(self, index: int) -> list[str]:
        """The paths of block `index`, as os.fsdecode gives them (open() takes them as they are)."""
        return [os.fsdecode(p) for p in self.file.read_row_group(index, columns=[PATH]).column(0).to_pylist()]

    def block_lengths(self) -> list[int]:
        return [self.file.metadata.row_group(i).num_rows for i in range(self.num_blocks)]
