"""pscl: label-efficient segmentation of metallographic micrographs (PSCL, Lightning + Hydra)."""

__version__ = "0.1.0"
