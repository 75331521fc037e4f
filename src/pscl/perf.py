"""Process-level performance settings for CPU training.

On Linux, glibc's malloc returns every large freed block (a feature map, a gradient) to the
operating system and maps it again on the next allocation; at the paper's configuration most of
a training step's CPU time then goes to page faults. :func:`tune_allocator` keeps freed memory
in the process instead (``mallopt``: no mmap for large blocks, no trimming), which halves the
step time on 2 cores (docs/performance.md). Set ``PSCL_MALLOC_TUNING=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep freed memory for reuse (glibc only); returns whether the settings were applied."""
    if os.environ.get("PSCL_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
