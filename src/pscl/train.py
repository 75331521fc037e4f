"""Kept for scripts and commands written before training became the package :mod:`pscl.training`:
``python -m pscl.train`` and ``pscl.train.train`` / ``main`` / ``run_cli`` work as before. New
code imports from :mod:`pscl.training.pipeline` and :mod:`pscl.training.app`.
"""

from pscl.training.app import main, run_cli
from pscl.training.pipeline import train

__all__ = ["main", "run_cli", "train"]

if __name__ == "__main__":
    main()
