"""Giving the C heap's free pages back to the system in long-running senders.

A sending worker's Python objects stay flat (tracemalloc, 300,000 messages), but
glibc's heap does not: each message's ~41 KB buffers and the event loop's 256 KB
receive buffers come from the heap (glibc raises its mmap threshold after the
first large free), and the few longer-lived allocations made between them leave
free holes that stay resident. Measured with mallinfo2 over 300,000 messages:
the main arena grew from 31 to 38 MB while the bytes in use stayed at 26-30 MB,
and peak RSS rose from 126 to 135 MB. ``malloc_trim(0)`` returns every free page
of the heap, holes included, so RSS follows what is in use.

Only glibc has malloc_trim; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_heap() -> None:
    """Return the heap's free pages to the system (a no-op without glibc)."""
    if _TRIM is not None:
        _TRIM(0)
