"""Process-level memory-allocator settings for CPU training (docs/performance.md).

A training step allocates and frees feature maps of tens to hundreds of MB. glibc's malloc
returns each of them to the operating system and maps it again on the next allocation, so at the
paper's configuration most of a step's CPU time went to page faults. Two remedies, chosen with
the environment variable ``PSCL_ALLOCATOR``:

* ``mimalloc`` (the default where the ``cmeel-mimalloc`` wheel is installed, which pscl depends
  on for Linux): ``pscl-train`` re-executes itself once with mimalloc preloaded and told to keep
  freed memory (``MIMALLOC_PURGE_DELAY=-1``). Fast, and its size classes keep fragmentation low;
* ``glibc-tuned`` (the fallback when mimalloc is absent): ``mallopt`` keeps freed memory in
  glibc's heap. As fast, but the heap fragments, so the resident size stays well above the live
  memory;
* ``glibc``: leave malloc alone (slow; lowest resident size).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from pscl.errors import EXIT_USER_ERROR

ALLOCATORS = ("mimalloc", "glibc-tuned", "glibc")
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# mimalloc keeps freed pages instead of returning them to the OS after a delay
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1"}


def requested_allocator(environ: Mapping[str, str] | None = None) -> str:
    """The allocator named by ``PSCL_ALLOCATOR`` (default ``mimalloc``); unknown names raise."""
    environ = os.environ if environ is None else environ
    name = environ.get("PSCL_ALLOCATOR", "mimalloc")
    if name not in ALLOCATORS:
        raise ValueError(f"PSCL_ALLOCATOR must be one of {ALLOCATORS}, got {name!r}")
    return name


def mimalloc_library() -> Path | None:
    """The shared library shipped by the ``cmeel-mimalloc`` wheel, or None when not installed."""
    try:
        dist = metadata.distribution("cmeel-mimalloc")
    except metadata.PackageNotFoundError:
        return None
    candidates = sorted((f for f in dist.files or [] if f.name.startswith("libmimalloc.so")), key=lambda f: len(f.name))
    for entry in candidates:
        path = Path(str(dist.locate_file(entry)))
        if path.is_file():
            return path
    return None


def mimalloc_environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """A copy of ``environ`` that preloads mimalloc, or None when that is not wanted or possible.

    None when ``PSCL_ALLOCATOR`` is not ``mimalloc``, off Linux, when the library is missing, or
    when it is preloaded already (so re-executing can never loop).
    """
    environ = os.environ if environ is None else environ
    if requested_allocator(environ) != "mimalloc" or not sys.platform.startswith("linux"):
        return None
    preload = environ.get("LD_PRELOAD", "")
    library = mimalloc_library()
    if library is None or "libmimalloc" in preload:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{library}:{preload}" if preload else str(library)
    for key, value in MIMALLOC_SETTINGS.items():
        env.setdefault(key, value)
    return env


def mimalloc_active() -> bool:
    """Whether mimalloc was preloaded into this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return any("libmimalloc" in line for line in maps)
    except OSError:
        return False


def reexec_with_mimalloc() -> None:
    """Replace this process by the same command with mimalloc preloaded (no-op when not wanted).

    Only for console entry points, before anything else has run: the process image is replaced.
    """
    env = mimalloc_environment()
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def tune_allocator() -> bool:
    """Keep freed memory in glibc's heap (``glibc-tuned``); returns whether settings were applied.

    Does nothing under ``PSCL_ALLOCATOR=glibc``, when mimalloc is active, or when libc is not glibc.
    """
    if requested_allocator() == "glibc" or mimalloc_active() or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def configure_allocator() -> str:
    """Apply ``PSCL_ALLOCATOR`` for a console script; returns the allocator in effect.

    Re-executes the process with mimalloc preloaded when that is requested and available (the
    call then never returns); otherwise tunes glibc unless told not to.
    """
    reexec_with_mimalloc()
    if mimalloc_active():
        return "mimalloc"
    return "glibc-tuned" if tune_allocator() else "glibc"


def choose_allocator(prog: str = "pscl-train") -> str:
    """Apply ``PSCL_ALLOCATOR`` (may re-execute this command with mimalloc preloaded) and record the
    allocator in effect in ``PSCL_ALLOCATOR_IN_EFFECT`` for the run's log; an unknown name is a user
    error (exit 2). Every entry point of ``pscl-train`` calls it first."""
    try:
        allocator = configure_allocator()
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    os.environ["PSCL_ALLOCATOR_IN_EFFECT"] = allocator
    return allocator
