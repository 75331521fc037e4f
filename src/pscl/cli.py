"""Console entry points that pick the memory allocator before torch is imported.

``pscl-train`` may re-execute itself with mimalloc preloaded (:mod:`pscl.perf`). Doing that
here, before :mod:`pscl.train` imports torch, Lightning and Hydra, means the libraries are loaded
once, in the final process, instead of in both.
"""

from __future__ import annotations


def train() -> None:
    """``pscl-train``: choose the allocator, then run :func:`pscl.train.main`."""
    from pscl.perf import reexec_with_mimalloc

    try:
        reexec_with_mimalloc()
    except ValueError:
        pass  # a bad PSCL_ALLOCATOR: pscl.train.main reports it as a user error
    from pscl.train import main

    main()
