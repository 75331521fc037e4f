"""Console entry points that pick the memory allocator before torch is imported.

``pscl-train`` may re-execute itself with mimalloc preloaded (:mod:`pscl.perf`). Doing that
here, before :mod:`pscl.training` imports torch, Lightning and Hydra, means the libraries are
loaded once, in the final process, instead of in both. This module therefore imports nothing
heavy at its top.
"""

from __future__ import annotations

import os
import sys

from pscl.errors import EXIT_USER_ERROR
from pscl.perf import configure_allocator


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


def train() -> None:
    """``pscl-train``: choose the allocator, then run :func:`pscl.training.app.run`."""
    choose_allocator()
    # imported only now: torch, Lightning and Hydra load once, after any re-execution
    from pscl.training.app import run

    run()
