"""Handing memory back to the operating system after large image decodes (glibc; a no-op elsewhere).

glibc serves a freed block again rather than unmapping it, and raises its mmap threshold to the size
of the largest block freed so far (up to 32 MiB): after one large decode, later decode buffers come
from the heap and the process keeps its peak resident size for good (1.48 GB after a few large
images, measured for issue 17). Fixing the threshold keeps every buffer of a MiB or more (image
blocks, numpy arrays, upload bytes) in its own mapping, returned on free; `release_free_memory`
returns what is left free in the heaps (malloc_trim).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("serve")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 1 << 20


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def map_large_allocations(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Allocations of `threshold` bytes or more get their own mapping, unmapped when freed. False if not glibc."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, threshold))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed: memory may stay at its peak after large decodes",
                    threshold)
    return ok


def release_free_memory() -> None:
    """Return the free parts of every malloc arena to the operating system (cheap: milliseconds)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
