"""Console entry points that pick the memory allocator before torch is imported.

``pscl-train`` may re-execute itself with mimalloc preloaded (:mod:`pscl.perf`). Doing that
here, before :mod:`pscl.training` imports torch, Lightning and Hydra, means the libraries are
loaded once, in the final process, instead of in both. This module therefore imports nothing
heavy at its top.
"""

from __future__ import annotations

from pscl.perf import choose_allocator


def train() -> None:
    """``pscl-train``: choose the allocator, then run :func:`pscl.training.app.run`."""
    choose_allocator()
    # imported only now: torch, Lightning and Hydra load once, after any re-execution
    from pscl.training.app import run

    run()
