"""glibc malloc settings for a process that streams large tensors over gRPC.

Every gRPC message is a fresh buffer: gRPC copies each outgoing chunk into a
slice of its own, and each incoming chunk arrives as a new bytes object. By
default glibc serves blocks of a MiB or more with mmap, or from a heap that it
trims back to the kernel as soon as a few MiB lie free at its top; either way
the next tensor's chunks land on fresh pages, and faulting those in costs more
than copying the data (on a 2-core VM: 100 MB encoded into 1 MiB chunks took
90 ms, 17 ms with freed memory kept for reuse).

``keep_freed_memory`` serves message-sized blocks from the heap and keeps what
is freed there for the next tensor, so a process's resident memory stays at
its peak instead of going back and forth. Blocks bigger than the threshold (a
model's parameter arrays) are still mapped and unmapped as before. It changes
nothing where malloc is not glibc's, or where the environment already tunes it
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``glibc.malloc.*``
in ``GLIBC_TUNABLES``): a process owner's choice wins.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Over the largest gRPC message (4 MiB), so every message buffer comes from the heap.
MMAP_THRESHOLD = 8 << 20
#: Free memory a heap keeps before it is given back: more than one large tensor's chunks.
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def _tuned_by_environment() -> bool:
    return ("MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True when they are in force."""
    global _applied
    if _applied is None:
        _applied = False
        if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc" or _tuned_by_environment():
            return False
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        log.debug("glibc malloc: mmap threshold %d, trim threshold %d (%s)", MMAP_THRESHOLD, TRIM_THRESHOLD,
                  "set" if _applied else "refused")
    return _applied
