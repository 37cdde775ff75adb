"""Folders of images for training: sampled, checked against memory, decoded on every core, cached on disk.

    decoder = FolderDecoder(cache_dir=Path("runs/.cache"), max_images=0, seed=0, device="cpu")
    decoded = decoder.decode(paths, channels=3, size=96)
    decoded.images  # (n, 3, 96, 96) uint8, the images of paths[decoded.kept] (unreadable ones left out)

1. `--max-images N` keeps a seeded random sample of the folder (listing order kept).
2. Before anything is decoded, the array's size (n x C x S x S bytes) is compared with the memory free
   on the training device (and on the host, which holds it first): `DoesNotFit` (exit 2) gives the
   estimate and what would fit.
3. The cache entry is keyed by the file list, each file's size and mtime, the stored resolution and
   channels, and the preprocessing code (contract/preprocess.py's source, PIL's version): a changed
   file, resolution or preprocessing means a new entry. A hit loads the array and decodes nothing.
4. A miss decodes with a process pool on every core, each worker writing its rows straight into a
   memory-mapped .npy next to the cache (no copies through pipes), with `prepare_source`, the
   gateway's preprocessing (including its format shortcuts such as JPEG draft mode). The file is
   renamed into place when complete, then its record (.json) is written: a half-written entry is
   never read.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from contract import files, preprocess

CACHE_VERSION = 1
MEMORY_FRACTION = 0.8
"""Share of the free memory the data set may take (the rest: the model, batches, the system)."""
CHUNK = 256
"""Images per decoding task."""
GIB = 2**30


class DoesNotFit(ValueError):
    """The decoded data set would not fit in the training device's (or the host's) free memory."""


@dataclass(frozen=True)
class Decoded:
    images: np.ndarray  # (n, C, S, S) uint8
    kept: np.ndarray  # (n,) int64: positions in the given paths of these images, increasing
    errors: list[str]  # "path: reason" for each sampled file that could not be read
    cache_hit: bool
    seconds: float


def available_memory(device: str) -> dict[str, int]:
    """Free bytes where the data set will live: {"host": ...} and, for CUDA devices, {"cuda:N": ...}."""
    free = {"host": _host_available()}
    if device.startswith("cuda"):
        import torch

        free[device] = int(torch.cuda.mem_get_info(torch.device(device))[0])
    return free


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(count: int, channels: int, size: int, free: dict[str, int]) -> None:
    """Raise DoesNotFit when count images of (channels, size, size) uint8 exceed MEMORY_FRACTION of any `free`."""
    per_image = channels * size * size
    need = count * per_image
    for where, available in free.items():
        budget = int(available * MEMORY_FRACTION)
        if need > budget:
            fit = budget // per_image
            raise DoesNotFit(
                f"{count:,} images at {channels}x{size}x{size} need {need / GIB:.1f} GiB as uint8, but {where} has "
                f"{available / GIB:.1f} GiB free ({MEMORY_FRACTION:.0%} usable): lower --image-size, or train on a "
                f"seeded random sample with --max-images N (about {fit:,} fit at this size)")


def sample(count: int, max_images: int, seed: int) -> np.ndarray:
    """Positions of a seeded random sample of max_images out of count (all when 0 or count is smaller), sorted."""
    if not max_images or max_images >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, max_images, replace=False))


def cache_key(paths: Sequence[str], channels: int, size: int) -> str:
    """sha256 of everything the decoded array depends on (file list, sizes, mtimes, resolution, preprocessing)."""
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_VERSION} {channels} {size} PIL {PIL.__version__}\n".encode())
    digest.update(Path(preprocess.__file__).read_bytes())
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:  # a vanished file: it fails to decode, and its absence is part of the key
            digest.update(f"{path}\t-\n".encode())
    return digest.hexdigest()


def _decode_rows(array_file: str, paths: list[str], start: int, channels: int, size: int) -> list[tuple[int, str]]:
    """Worker: decode paths into rows start.. of the memory-mapped array; returns (row, error) of failures."""
    rows = np.load(array_file, mmap_mode="r+")
    failed = []
    for offset, path in enumerate(paths):
        try:
            rows[start + offset] = preprocess.prepare_source(path, size, channels)
        except Exception as err:  # any failure of one file (MemoryError included) skips that file only
            text = str(err) if isinstance(err, preprocess.ImageError) else f"{path}: {type(err).__name__}: {err}"
            failed.append((start + offset, text))
    rows.flush()
    return failed


def decode_into(array_file: Path, paths: list[str], channels: int, size: int, workers: int) -> dict[int, str]:
    """Decode every path into a new .npy (len(paths), C, S, S) at array_file; returns {row: error}."""
    rows = np.lib.format.open_memmap(array_file, mode="w+", dtype=np.uint8, shape=(len(paths), channels, size, size))
    del rows  # header written; workers open the file themselves
    chunks = [(str(array_file), paths[i:i + CHUNK], i, channels, size) for i in range(0, len(paths), CHUNK)]
    errors: dict[int, str] = {}
    if workers <= 1 or len(chunks) == 1:
        for chunk in chunks:
            errors.update(_decode_rows(*chunk))
        return errors
    # fork: workers need no fresh interpreter (no torch import), and they touch only PIL and numpy
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
        for failed in pool.map(_decode_rows, *zip(*chunks, strict=True)):
            errors.update(failed)
    return errors


def _remove_stale(cache_dir: Path) -> None:
    """Delete the partial arrays of decoding processes that are gone (killed mid-decode)."""
    for partial in cache_dir.glob(".*.npy.tmp"):
        pid = partial.name.split(".")[2]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            partial.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def _compact(images: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """images[ok] without a second copy of the array: rows moved down in place, then a view of the first n."""
    if ok.all():
        return images
    keep = np.flatnonzero(ok)
    for target, source in enumerate(keep):
        if target != source:
            images[target] = images[source]
    return images[:len(keep)]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class FolderDecoder:
    """How a folder of image files becomes the training array (see the module docstring)."""

    cache_dir: Path | None = None  # None: decode without keeping the result
    max_images: int = 0  # 0: every image
    seed: int = 0
    device: str = "cpu"  # where the array will live ("cpu", "cuda", "cuda:1"): its free memory is checked
    workers: int = 0  # decoding processes (0: every core)
    log: Callable[[str], None] | None = None

    def decode(self, paths: Sequence[str | Path], channels: int, size: int) -> Decoded:
        began = time.perf_counter()
        chosen = sample(len(paths), self.max_images, self.seed)
        names = [str(paths[i]) for i in chosen]
        check_fits(len(names), channels, size, available_memory(self.device))
        if self.cache_dir is None:
            images, errors, hit = self._decode_uncached(names, channels, size)
        else:
            images, errors, hit = self._decode_cached(names, channels, size)
        ok = np.ones(len(names), bool)
        ok[list(errors)] = False
        seconds = time.perf_counter() - began
        if self.log is not None:
            where = "" if self.cache_dir is None else (" from the cache" if hit else f", cached in {self.cache_dir}")
            picked = f" (a sample of {len(names):,} of {len(paths):,})" if len(names) < len(paths) else ""
            self.log(f"{int(ok.sum()):,} images{picked} at {channels}x{size}x{size} in {seconds:.1f} s{where}")
        return Decoded(_compact(images, ok), chosen[ok], [errors[i] for i in sorted(errors)], hit, seconds)

    def _decode_uncached(self, names: list[str], channels: int, size: int) -> tuple[np.ndarray, dict[int, str], bool]:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="decode-") as tmp:
            errors = decode_into(Path(tmp) / "images.npy", names, channels, size, self.workers or cpu_count())
            return np.load(Path(tmp) / "images.npy"), errors, False

    def _decode_cached(self, names: list[str], channels: int, size: int) -> tuple[np.ndarray, dict[int, str], bool]:
        assert self.cache_dir is not None
        key = cache_key(names, channels, size)
        array_file, record_file = self.cache_dir / f"{key}.npy", self.cache_dir / f"{key}.json"
        if record_file.is_file() and array_file.is_file():
            record = files.read_json(record_file)
            return np.load(array_file), {int(k): v for k, v in record["errors"].items()}, True
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.cache_dir)
        partial = self.cache_dir / f".{key}.{os.getpid()}.npy.tmp"
        try:
            errors = decode_into(partial, names, channels, size, self.workers or cpu_count())
            with open(partial, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(partial, array_file)
            files.fsync_dir(self.cache_dir)
        finally:
            partial.unlink(missing_ok=True)
        files.write_text(record_file, json.dumps({
            "version": CACHE_VERSION, "images": len(names), "channels": channels, "size": size,
            "first": names[0] if names else None, "last": names[-1] if names else None,
            "errors": {str(k): v for k, v in sorted(errors.items())}}, indent=1) + "\n")
        return np.load(array_file), errors, False
