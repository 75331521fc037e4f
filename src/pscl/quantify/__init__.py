"""Microstructure quantification of segmented micrographs (class-index masks, 255 = ignore).

Class 0 is the matrix, classes 1.. are precipitate phases. For each image: phase (area) fractions
(:func:`phase_rows`) and one row per particle, a connected component of a precipitate class, with
its size and shape (:func:`particle_rows`). Over images: per-image, per-group and overall means
(:func:`summary_rows`), written with :func:`write_csv` and drawn with :func:`plot_summary`.
Lengths are in pixels, and also in µm when the pixel size is known (the µm columns are empty
otherwise).
"""

from pscl.quantify.particles import particle_rows
from pscl.quantify.phases import phase_rows
from pscl.quantify.plots import plot_summary
from pscl.quantify.summary import NO_GROUP, summary_columns, summary_rows
from pscl.quantify.tables import PARTICLE_COLUMNS, PHASE_COLUMNS, write_csv

__all__ = [
    "NO_GROUP", "PARTICLE_COLUMNS", "PHASE_COLUMNS", "particle_rows", "phase_rows", "plot_summary",
    "summary_columns", "summary_rows", "write_csv",
]
