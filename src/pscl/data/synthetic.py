"""Procedural micrographs of etched, homogenised cast aluminium alloys.

The generator is the default, dependency-free dataset of pscl. It mimics optical
micrographs of the kind used in the PSCL paper (198 images of 376x376 px, four classes,
three homogenisation holding-time groups) closely enough that segmenting them needs
spatial context: every phase overlaps another one in grey level.

Classes (mask values)::

    0 matrix                 alpha-Al grains, faint grain boundaries, polishing scratches
    1 eutectic_network       interdendritic network, lamellar dark grey
    2 coarse_intermetallic   compact and needle/plate-like particles, mostly at junctions
    3 dispersoid             1-2 px dots inside the dendrite cells

Holding-time groups: ``0`` continuous network and many needles, ``1`` fragmented network,
``2`` spheroidised network (chains of rounded particles) and rounder intermetallics.

Command line: ``pscl-synth --out DIR [--stats] [--preview PNG]`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree

CLASS_NAMES: tuple[str, ...] = ("matrix", "eutectic_network", "coarse_intermetallic", "dispersoid")
GROUPS: tuple[str, ...] = ("15-30min", "45-60min", "90-120min")
GENERATOR_VERSION: int = 1

# First `_` token of an image id is the holding time, like the authors' file names.
_GROUP_PREFIXES: tuple[str, ...] = ("15", "45", "90")
_MARKER = "synthetic.json"
# RGB used for the mask overlay of the preview montage (matrix stays uncoloured).
_OVERLAY_COLOURS = np.array(
    [[0.0, 0.0, 0.0], [0.15, 0.55, 1.0], [1.0, 0.25, 0.15], [1.0, 0.9, 0.0]], dtype=np.float32
)


@dataclass(frozen=True)
class _GroupParams:
    """Morphology knobs of one holding-time group."""

    network_halfwidth: tuple[float, float]  # px, drawn per image
    segment_keep: float  # probability that a cell-boundary segment carries network
    break_threshold: float | None  # noise level above which the network is cut (fragments)
    chains: bool  # spheroidised: network replaced by rows of rounded particles
    needle_fraction: float
    blob_aspect: tuple[float, float]
    blob_roughness: float  # amplitude of the radial harmonics of compact particles
    coarse_count: tuple[int, int]  # per 376x376 image
    dispersoid_fraction: tuple[float, float]  # target area fraction


_GROUP_PARAMS: tuple[_GroupParams, ...] = (
    _GroupParams((0.85, 1.4), 0.96, None, False, 0.6, (1.3, 2.2), 0.2, (28, 42), (0.004, 0.008)),
    _GroupParams((1.0, 1.5), 0.75, 0.3, False, 0.35, (1.15, 1.7), 0.13, (28, 42), (0.007, 0.011)),
    _GroupParams((0.9, 1.3), 0.8, None, True, 0.1, (1.0, 1.3), 0.05, (26, 38), (0.009, 0.014)),
)


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a generated dataset (and hence its cache key)."""

    counts: tuple[int, ...] = (66, 60, 72)
    size: int = 376
    seed: int = 0
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        # Accept lists from configs, but store a tuple so the spec stays hashable.
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))
        if len(self.counts) != len(GROUPS) or any(c < 0 for c in self.counts):
            raise ValueError(f"counts must be {len(GROUPS)} non-negative ints, got {self.counts}")
        if sum(self.counts) == 0:
            raise ValueError("counts must contain at least one image")
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")

    def to_dict(self) -> dict:
        """JSON-friendly fields plus the generator version."""
        d = asdict(self)
        d["counts"] = list(self.counts)
        d["generator_version"] = GENERATOR_VERSION
        return d

    def cache_key(self) -> str:
        """Folder name that changes whenever the spec or the generator output changes."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"synthetic-v{GENERATOR_VERSION}-{hashlib.sha256(blob).hexdigest()[:12]}"


# --------------------------------------------------------------------------- fields


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth Gaussian random field(s), unit std, correlation length ~sigma px.

    Filtering white noise in Fourier space costs the same for any sigma; the fields are
    periodic, which is invisible at these scales.
    """
    h, w = shape[-2:]
    white = rng.standard_normal(shape, dtype=np.float32)
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    transfer = np.exp(np.float32(-2.0 * (math.pi * sigma) ** 2) * (fy**2 + fx**2))
    field = sfft.irfft2(sfft.rfft2(white) * transfer, s=(h, w))
    field -= field.mean(axis=(-2, -1), keepdims=True)
    field /= field.std(axis=(-2, -1), keepdims=True) + np.float32(1e-12)
    return field


def _voronoi(
    seeds: np.ndarray, u: np.ndarray, v: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-seed indices and exact distances to the bisectors with the 2nd..k-th seeds.

    Returns ``(idx (k,H,W), bis (k-1,H,W), d1 (H,W))``; ``bis[0]`` is the distance to the
    nearest cell boundary, ``max(bis[0], bis[1])`` is small only near a triple junction.
    """
    pts = np.stack([u.ravel(), v.ravel()], axis=1)
    dist, idx = cKDTree(seeds).query(pts, k=k)
    d1 = dist[:, 0]
    bis = []
    for j in range(1, k):
        sep = np.linalg.norm(seeds[idx[:, j]] - seeds[idx[:, 0]], axis=1)
        bis.append((dist[:, j] ** 2 - d1**2) / (2.0 * np.maximum(sep, 1e-6)))
    shape = u.shape
    return (
        idx.T.reshape((k, *shape)),
        np.stack(bis).reshape((k - 1, *shape)).astype(np.float32),
        d1.reshape(shape).astype(np.float32),
    )


def _jittered_grid(
    rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, spacing: float, jitter: float
) -> np.ndarray:
    """Seed points on a jittered square grid covering [lo, hi] (roughly even cell sizes)."""
    gx = np.arange(lo[0], hi[0] + spacing, spacing)
    gy = np.arange(lo[1], hi[1] + spacing, spacing)
    pts = np.stack(np.meshgrid(gx, gy, indexing="xy"), axis=-1).reshape(-1, 2)
    return pts + rng.uniform(-jitter, jitter, pts.shape) * spacing


def _render_dots(
    shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray, wobble: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise many small irregular discs in one distance transform.

    Returns a boolean mask and, per pixel, the index of the disc it belongs to (-1: none).
    Overlapping discs are split along the bisector, which only matters for touching dots.
    """
    if len(centres) == 0:
        return np.zeros(shape, bool), np.full(shape, -1, np.int64)
    seeds = np.zeros(shape, bool)
    owner = np.full(shape, -1, np.int64)
    cy, cx = centres[:, 0], centres[:, 1]
    seeds[cy, cx] = True
    owner[cy, cx] = np.arange(len(centres))
    dist, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    nearest = owner[iy, ix]
    inside = dist + wobble < radii[nearest]
    return inside, np.where(inside, nearest, -1)


def _stamp(
    canvas: np.ndarray, cy: float, cx: float, half: int, inside_fn
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Evaluate ``inside_fn(dy, dx)`` on a window around (cy, cx) clipped to the canvas."""
    h, w = canvas.shape
    y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, h)
    x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, w)
    if y0 >= y1 or x0 >= x1:
        return None
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    inside = inside_fn(dy - cy, dx - cx)
    return (slice(y0, y1), slice(x0, x1)), inside


def _pick(rng: np.random.Generator, weight: np.ndarray, n: int) -> np.ndarray:
    """Draw n pixel positions ((n,2) as y,x) with probability proportional to weight."""
    flat = weight.ravel().astype(np.float64)
    total = flat.sum()
    if n <= 0 or total <= 0:
        return np.zeros((0, 2), np.int64)
    idx = rng.choice(flat.size, size=n, p=flat / total)
    return np.stack(np.unravel_index(idx, weight.shape), axis=1)


def _thin(points: np.ndarray, min_dist: float) -> np.ndarray:
    """Greedy Poisson-disc thinning: keep points farther than min_dist from kept ones."""
    if len(points) == 0:
        return points
    tree = cKDTree(points)
    keep = np.ones(len(points), bool)
    for i, nbrs in enumerate(tree.query_ball_point(points, r=min_dist)):
        if keep[i]:
            for j in nbrs:
                if j > i:
                    keep[j] = False
    return points[keep]


# --------------------------------------------------------------------------- generator


def generate_micrograph(
    rng: np.random.Generator, group: int, size: int = 376
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic micrograph of holding-time ``group`` (0, 1, 2).

    Returns ``(image, mask)``: (size, size) uint8 grey image and uint8 mask with values 0..3.
    """
    if group not in range(len(GROUPS)):
        raise ValueError(f"group must be in 0..{len(GROUPS) - 1}, got {group}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    p = _GROUP_PARAMS[group]
    h = w = size
    area_scale = (size / 376.0) ** 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # ---- dendrite cells: warped, slightly anisotropic Voronoi tessellation
    cell = rng.uniform(29.0, 42.0)
    warp = _noise(rng, (2, h, w), cell * 0.6) * (cell * 0.18)
    warp += _noise(rng, (2, h, w), cell * 0.22) * (cell * 0.1)  # curved cell walls
    warp += _noise(rng, (2, h, w), 1.6) * 0.9  # ragged phase boundaries
    wx, wy = xx + warp[0], yy + warp[1]
    theta = rng.uniform(0.0, math.pi)
    stretch = math.sqrt(rng.uniform(1.0, 1.4))
    ct, st = math.cos(theta), math.sin(theta)
    u = (wx * ct + wy * st) / stretch
    v = (-wx * st + wy * ct) * stretch
    lo = np.array([u.min(), v.min()]) - 2 * cell
    hi = np.array([u.max(), v.max()]) + 2 * cell
    seeds = _jittered_grid(rng, lo, hi, cell, 0.42)
    idx, bis, _ = _voronoi(seeds, u, v, k=3)
    db = bis[0]  # distance to the nearest cell boundary
    dj = np.maximum(bis[0], bis[1])  # small only near triple junctions
    # Per boundary segment (pair of cells) random values without an n^2 table:
    # (r_i + r_j) mod 1 is symmetric and uniform for independent uniform r.
    r_thick, r_on = rng.random((2, len(seeds)), dtype=np.float32)
    seg_thick = 0.7 + 0.65 * ((r_thick[idx[0]] + r_thick[idx[1]]) % 1.0)
    seg_on = (r_on[idx[0]] + r_on[idx[1]]) % 1.0 < p.segment_keep

    mask = np.zeros((h, w), np.uint8)

    # ---- dispersoids: inside cells, clear of the precipitate-free zone along boundaries
    cluster = _noise(rng, (h, w), 10.0)
    frac = rng.uniform(*p.dispersoid_fraction)
    n_disp = int(frac * h * w / 7.5)
    disp_w = (db > 4.5) * np.exp(1.1 * cluster)
    disp_pts = _thin(_pick(rng, disp_w, n_disp), 2.5)

    # ---- eutectic network
    hw = rng.uniform(*p.network_halfwidth)
    thick = hw * seg_thick * (1.0 + 0.3 * _noise(rng, (h, w), 5.0))
    thick += 1.3 * np.exp(-dj / 2.5)  # eutectic pockets at junctions
    network = (db < thick) & seg_on
    chain_pts = np.zeros((0, 2), np.int64)
    if p.break_threshold is not None:
        network &= _noise(rng, (h, w), 3.5) < p.break_threshold
    if p.chains:
        # Spheroidised: rows of rounded particles along the former boundaries, plus a few
        # short remnants of the network.
        remnant = network & (_noise(rng, (h, w), 4.0) > 1.3)
        line = (db < 0.7) & seg_on
        n_line = int(line.sum())
        chain_pts = _thin(_pick(rng, line, n_line // 4), rng.uniform(7.0, 10.0))
        network = remnant
    mask[network] = 1

    dot_pts = np.concatenate([chain_pts, disp_pts])
    dot_r = np.concatenate(
        [
            np.clip(rng.lognormal(math.log(2.1), 0.3, len(chain_pts)), 1.2, 4.0),
            rng.uniform(0.8, 2.1, len(disp_pts)),
        ]
    ).astype(np.float32)
    wobble = 0.45 * _noise(rng, (h, w), 1.2)
    dots, owner = _render_dots((h, w), dot_pts, dot_r, wobble)
    is_chain = dots & (owner < len(chain_pts))
    mask[dots & ~is_chain & (mask == 0)] = 3
    mask[is_chain] = 1

    # ---- coarse intermetallics, preferentially at junctions
    n_coarse = max(1, int(round(rng.integers(*p.coarse_count) * area_scale)))
    coarse_w = np.exp(-dj / 2.0) + 0.03 * (db < 2.0)
    coarse_pts = _pick(rng, coarse_w, n_coarse)
    coarse_id = np.full((h, w), -1, np.int32)
    # The boundary normal in (u, v) maps to image space through the (ignored-warp)
    # linear map, giving needles that roughly follow the interdendritic channels.
    a_mat = np.array([[ct / stretch, st / stretch], [-st * stretch, ct * stretch]])
    for k, (cy, cx) in enumerate(coarse_pts):
        if rng.random() < p.needle_fraction:
            n_uv = seeds[idx[1, cy, cx]] - seeds[idx[0, cy, cx]]
            n_img = a_mat.T @ n_uv
            ang = math.atan2(n_img[1], n_img[0]) + math.pi / 2 + rng.normal(0.0, 0.35)
            length = rng.uniform(9.0, 24.0)
            width = rng.uniform(1.1, 2.0)
            bend = rng.uniform(-0.012, 0.012)
            ca, sa = math.cos(ang), math.sin(ang)

            def inside(dy, dx, ca=ca, sa=sa, length=length, width=width, bend=bend):
                along = dx * ca + dy * sa
                across = -dx * sa + dy * ca - bend * along**2
                taper = np.sqrt(np.clip(1.0 - (along / length) ** 4, 0.0, 1.0))
                return np.abs(across) < width * taper

            half = int(length) + 3
        else:
            r0 = rng.uniform(3.5, 8.5)
            asp = rng.uniform(*p.blob_aspect)
            ra, rb = r0 * math.sqrt(asp), r0 / math.sqrt(asp)
            ang = rng.uniform(0.0, math.pi)
            ks = np.arange(2, 6)
            amps = rng.normal(0.0, p.blob_roughness, len(ks)) / ks**0.5
            phases = rng.uniform(0.0, 2 * math.pi, len(ks))
            ca, sa = math.cos(ang), math.sin(ang)

            def inside(dy, dx, ca=ca, sa=sa, ra=ra, rb=rb, amps=amps, phases=phases, ks=ks):
                pu = (dx * ca + dy * sa) / ra
                pv = (-dx * sa + dy * ca) / rb
                phi = np.arctan2(pv, pu)[..., None]
                edge = 1.0 + np.sum(amps * np.cos(ks * phi + phases), axis=-1)
                return np.hypot(pu, pv) < edge

            half = int(ra * 1.6) + 3
        stamped = _stamp(mask, float(cy), float(cx), half, inside)
        if stamped is not None:
            win, inside_win = stamped
            mask[win][inside_win] = 2
            coarse_id[win][inside_win] = k

    # ---- grains: a few large Voronoi grains with their own etch brightness
    n_grains = max(2, int(rng.uniform(4, 9) * area_scale))
    gseeds = rng.uniform(-0.2 * size, 1.2 * size, (n_grains + 3, 2))
    gwarp = _noise(rng, (2, h, w), 20.0) * 6.0
    gx, gy = xx + gwarp[0], yy + gwarp[1]
    if len(gseeds) > 16:  # large images: a KD-tree keeps memory flat
        g_near, g_bis_all, _ = _voronoi(gseeds, gx, gy, k=2)
        g_bis = g_bis_all[0]
    else:  # few seeds: brute force beats a KD-tree
        gd2 = (gx[None] - gseeds[:, 0, None, None].astype(np.float32)) ** 2
        gd2 += (gy[None] - gseeds[:, 1, None, None].astype(np.float32)) ** 2
        g_near = np.argpartition(gd2, 1, axis=0)[:2]
        gd_a = np.take_along_axis(gd2, g_near[:1], 0)[0]
        gd_b = np.take_along_axis(gd2, g_near[1:2], 0)[0]
        g_sep = np.linalg.norm(gseeds[g_near[1]] - gseeds[g_near[0]], axis=-1)
        g_bis = (gd_b - gd_a) / (2.0 * np.maximum(g_sep.astype(np.float32), 1e-6))
    grain_level = rng.normal(0.0, 1.0, len(gseeds)).astype(np.float32)

    # ---- intensities (0..255 before illumination)
    matrix_lvl = rng.uniform(160.0, 205.0)
    img = np.full((h, w), matrix_lvl, np.float32)
    img += rng.uniform(4.0, 10.0) * grain_level[g_near[0]]
    img -= rng.uniform(10.0, 24.0) * np.exp(-db / rng.uniform(4.0, 7.0))  # coring near boundaries
    img += rng.uniform(2.0, 5.0) * _noise(rng, (h, w), 12.0)  # etch mottling
    img += rng.uniform(2.0, 4.0) * _noise(rng, (h, w), 1.0)  # fine etch texture
    gb = np.exp(-((g_bis / 0.8) ** 2)) * (0.5 + 0.5 * np.abs(_noise(rng, (h, w), 15.0)))
    img -= rng.uniform(20.0, 45.0) * gb  # grain boundaries stay matrix

    net_lvl = rng.uniform(70.0, 110.0)
    orient = _noise(rng, (h, w), 14.0) * 1.5
    period = rng.uniform(2.6, 3.8)
    lamellae = np.sin(2 * math.pi * (xx * np.cos(orient) + yy * np.sin(orient)) / period)
    net_tone = net_lvl + rng.uniform(14.0, 26.0) * lamellae + 6.0 * _noise(rng, (h, w), 2.0)
    sel = mask == 1
    img[sel] = net_tone[sel]

    if n_coarse:
        coarse_lvl = (rng.uniform(-12.0, 6.0) + net_lvl + rng.normal(0.0, 12.0, n_coarse)).astype(
            np.float32
        )
        sel = mask == 2
        inner = ndimage.binary_erosion(sel)
        img[sel] = coarse_lvl[coarse_id[sel]] + 4.0 * _noise(rng, (h, w), 3.0)[sel]
        img[sel & ~inner] -= rng.uniform(5.0, 15.0)  # relief outline

    sel = mask == 3
    img[sel] = rng.uniform(45.0, 85.0) + 10.0 * rng.standard_normal(int(sel.sum()))

    # ---- polishing scratches (long, faint, slightly curved; class unchanged)
    scratches = np.zeros((h, w), np.float32)
    for _ in range(int(rng.poisson(2.0))):
        ang = rng.uniform(0.0, math.pi)
        c = rng.uniform(0.0, size, 2)
        length = rng.uniform(0.5, 1.6) * size
        t = np.arange(-length / 2, length / 2, 0.5)
        bend = rng.uniform(-1.0, 1.0) / size
        py = c[0] + t * math.sin(ang) + bend * t**2 * math.cos(ang)
        px = c[1] + t * math.cos(ang) - bend * t**2 * math.sin(ang)
        ok = (py >= 0) & (py < h - 0.5) & (px >= 0) & (px < w - 0.5)
        strength = rng.uniform(8.0, 30.0) * (0.6 + 0.4 * np.sin(t / rng.uniform(20, 80)))
        rows, cols = np.rint(py[ok]).astype(int), np.rint(px[ok]).astype(int)
        np.add.at(scratches, (rows, cols), strength[ok])
    img -= ndimage.gaussian_filter(scratches, 0.6) * 0.9

    # ---- optics: blur, uneven illumination / vignetting, sensor noise
    img = ndimage.gaussian_filter(img, rng.uniform(0.55, 1.05))
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.5 * size**2)
    g_ang = rng.uniform(0.0, 2 * math.pi)
    ramp = ((xx - size / 2) * math.cos(g_ang) + (yy - size / 2) * math.sin(g_ang)) / size
    illum = 1.0 - rng.uniform(0.04, 0.2) * r2 + rng.uniform(0.0, 0.18) * ramp
    illum += 0.02 * _noise(rng, (h, w), 60.0)
    img = img * illum + rng.uniform(2.5, 6.0) * rng.standard_normal((h, w)).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, mask


# --------------------------------------------------------------------------- dataset folder


def _image_plan(spec: SyntheticSpec) -> list[tuple[str, int, int]]:
    """(id, group, index within group) for every image of the spec."""
    return [
        (f"{_GROUP_PREFIXES[g]}_{i:03d}", g, i) for g, n in enumerate(spec.counts) for i in range(n)
    ]


def _image_rng(spec: SyntheticSpec, group: int, index: int) -> np.random.Generator:
    """Independent stream per image, so images can be made in any order or in parallel."""
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(group, index)))


def _splits(spec: SyntheticSpec, plan: list[tuple[str, int, int]]) -> dict[str, list[str]]:
    """Stratified train/test split, deterministic from the seed."""
    train: list[str] = []
    test: list[str] = []
    for g in range(len(GROUPS)):
        ids = [i for i, gg, _ in plan if gg == g]
        if not ids:
            continue
        rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(1000, g)))
        order = rng.permutation(len(ids))
        n_test = int(round(spec.test_fraction * len(ids)))
        if spec.test_fraction > 0 and len(ids) >= 2:
            n_test = min(max(n_test, 1), len(ids) - 1)  # keep both sides non-empty
        test += [ids[j] for j in order[:n_test]]
        train += [ids[j] for j in order[n_test:]]
    return {"train": sorted(train), "test": sorted(test)}


def is_finished_dataset(path: Path) -> bool:
    """True if ``path`` is a completely written synthetic dataset (marker file present)."""
    marker = Path(path) / _MARKER
    try:
        return "generator_version" in json.loads(marker.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _check_target(out: Path) -> None:
    """Refuse to replace anything that is not an empty folder or one of our datasets."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not is_finished_dataset(out):
        raise FileExistsError(
            f"{out} is not empty and is not a finished pscl synthetic dataset; "
            "refusing to overwrite it (choose another --out or empty the folder)"
        )


def write_dataset(out: Path, spec: SyntheticSpec = SyntheticSpec(), progress: bool = True) -> Path:
    """Generate ``spec`` into the folder ``out`` (images/, masks/, classes.txt, meta.csv,
    splits.json, synthetic.json) and return ``out``.

    The folder is built next to ``out`` and renamed into place, so readers never see a
    half-written dataset; an existing finished synthetic dataset at ``out`` is replaced.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        plan = _image_plan(spec)
        for image_id, g, i in tqdm(plan, desc="pscl-synth", unit="img", disable=not progress):
            image, mask = generate_micrograph(_image_rng(spec, g, i), g, spec.size)
            Image.fromarray(image).save(tmp / "images" / f"{image_id}.png")
            Image.fromarray(mask).save(tmp / "masks" / f"{image_id}.png")
        (tmp / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
        with open(tmp / "meta.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["id", "group"])
            writer.writerows([image_id, GROUPS[g]] for image_id, g, _ in plan)
        (tmp / "splits.json").write_text(json.dumps(_splits(spec, plan), indent=1) + "\n")
        # Written last: its presence means "finished".
        (tmp / _MARKER).write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True) + "\n")
        _move_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``, replacing an empty folder or a finished dataset."""
    old = None
    if out.exists():
        _check_target(out)  # re-check: something may have appeared while generating
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except OSError:
        # Another process won the race with an identical, finished dataset: keep theirs.
        if not is_finished_dataset(out):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_dataset(
    cache_dir: Path, spec: SyntheticSpec = SyntheticSpec(), progress: bool = True
) -> Path:
    """Return ``cache_dir / spec.cache_key()``, generating it on first use.

    Concurrent callers (e.g. DDP ranks or dataloader workers) serialise on a lock file, so
    the dataset is generated exactly once.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / spec.cache_key()
    if is_finished_dataset(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock_path = cache_dir / f".{spec.cache_key()}.lock"
    with open(lock_path, "a+") as lock:
        try:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): the atomic rename still protects readers
            pass
        if not is_finished_dataset(target):
            if target.exists():
                # Only an interrupted foreign write can leave this behind in our cache.
                shutil.rmtree(target)
            write_dataset(target, spec, progress=progress)
    return target


# --------------------------------------------------------------------------- stats and preview


def _read_meta(root: Path) -> list[tuple[str, str]]:
    with open(Path(root) / "meta.csv", newline="") as fh:
        return [(row["id"], row["group"]) for row in csv.DictReader(fh)]


def class_fractions(root: Path) -> dict[str, np.ndarray]:
    """Pixel fraction of each class per group (and ``"all"``) of a dataset folder."""
    from pscl.data.io import open_checked  # the pixel limit; imported here: the generator alone needs no pscl

    root = Path(root)
    counts: dict[str, np.ndarray] = {}
    for image_id, group in _read_meta(root):
        mask = np.asarray(open_checked(root / "masks" / f"{image_id}.png"))
        hist = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)]
        for key in (group, "all"):
            counts[key] = counts.get(key, 0) + hist
    return {k: c / max(c.sum(), 1) for k, c in counts.items()}


def stats_table(root: Path) -> str:
    """Markdown table of class fractions (%) per group."""
    fractions = class_fractions(root)
    meta = _read_meta(root)
    lines = [
        "| group | images | " + " | ".join(CLASS_NAMES) + " |",
        "|---|---:|" + "---:|" * len(CLASS_NAMES),
    ]
    for key in [g for g in GROUPS if g in fractions] + ["all"]:
        n = sum(1 for _, g in meta if key in (g, "all"))
        cells = " | ".join(f"{100 * f:.2f}" for f in fractions[key])
        lines.append(f"| {key} | {n} | {cells} |")
    return "\n".join(lines)


def write_preview(root: Path, png: Path, per_group: int = 2) -> Path:
    """Montage: one row per group, ``per_group`` samples each as image | mask overlay."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from pscl.data.io import open_checked  # the pixel limit; imported here: the generator alone needs no pscl

    root, png = Path(root), Path(png)
    meta = _read_meta(root)
    rows = [(g, [i for i, gg in meta if gg == g][:per_group]) for g in GROUPS]
    rows = [r for r in rows if r[1]]
    ncols = 2 * per_group
    fig = Figure(figsize=(3.2 * ncols, 3.3 * len(rows) + 0.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (group, ids) in enumerate(rows):
        for s in range(per_group):
            ax_img, ax_ov = axes[r, 2 * s], axes[r, 2 * s + 1]
            for ax in (ax_img, ax_ov):
                ax.set_axis_off()
            if s >= len(ids):
                continue
            image = np.asarray(open_checked(root / "images" / f"{ids[s]}.png")).astype(np.float32)
            mask = np.asarray(open_checked(root / "masks" / f"{ids[s]}.png"))
            grey = np.repeat(image[..., None] / 255.0, 3, axis=-1)
            alpha = np.where(mask > 0, 0.55, 0.0)[..., None]
            overlay = grey * (1 - alpha) + _OVERLAY_COLOURS[np.minimum(mask, 3)] * alpha
            ax_img.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax_ov.imshow(overlay)
            ax_img.set_title(f"{group}  {ids[s]}", fontsize=10)
            ax_ov.set_title("mask overlay", fontsize=10)
    handles = [
        Patch(color=_OVERLAY_COLOURS[c], label=CLASS_NAMES[c]) for c in range(1, len(CLASS_NAMES))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.96, bottom=0.05, wspace=0.03, hspace=0.12)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    return png


# --------------------------------------------------------------------------- CLI


def _counts_arg(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if len(counts) != len(GROUPS) or any(c < 0 for c in counts) or sum(counts) == 0:
        raise argparse.ArgumentTypeError(
            f"expected {len(GROUPS)} non-negative counts (one per group), got {text!r}"
        )
    return counts


def _bounded_int(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    default = SyntheticSpec()
    parser = argparse.ArgumentParser(
        prog="pscl-synth", description="Generate the synthetic aluminium-alloy micrograph dataset."
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--seed", type=_bounded_int(0), default=default.seed)
    parser.add_argument(
        "--size", type=_bounded_int(32), default=default.size, help="image side in px"
    )
    parser.add_argument(
        "--counts",
        type=_counts_arg,
        default=default.counts,
        help="images per group, e.g. 66,60,72",
    )
    parser.add_argument("--test-fraction", type=_fraction_arg, default=default.test_fraction)
    parser.add_argument("--preview", type=Path, help="write a PNG montage of samples here")
    parser.add_argument("--stats", action="store_true", help="print class fractions per group")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _file_in_the_way(path: Path) -> Path | None:
    """The first of ``path``'s existing ancestors that is not a folder (so ``path`` cannot be made)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _path_problem(option: str, path: Path, folder: bool) -> str | None:
    """Why ``path`` cannot be written as ``option`` (a folder or a file), or None."""
    blocker = _file_in_the_way(path)
    if blocker is not None:
        return f"{option} {path}: {blocker} is a file, so nothing can be written below it"
    if folder and path.exists() and not path.is_dir():
        return f"{option} {path} is a file; pass a folder (it is created if missing)"
    if not folder and path.is_dir():
        return f"{option} {path} is a folder; pass the name of a .png file"
    return None


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject, before any work, an --out or --preview that cannot be written (exit 2)."""
    for option, path, folder in (("--out", args.out, True), ("--preview", args.preview, False)):
        problem = None if path is None else _path_problem(option, path, folder)
        if problem is not None:
            parser.error(problem)
    try:
        _check_target(args.out)
    except FileExistsError as err:
        parser.error(str(err))


def _synth(argv: list[str] | None) -> int:
    """The body of pscl-synth: check the options, write the dataset, then the stats and preview."""
    from pscl.errors import DataError

    parser = _parser()
    args = parser.parse_args(argv)
    _check_options(parser, args)
    spec = SyntheticSpec(
        counts=args.counts, size=args.size, seed=args.seed, test_fraction=args.test_fraction
    )
    start = time.perf_counter()
    try:
        write_dataset(args.out, spec, progress=not args.no_progress)
    except OSError as exc:  # no permission, a full or read-only disk: nothing half-written stays
        raise DataError(
            f"cannot write the dataset ({exc.strerror or type(exc).__name__})",
            args.out,
            "pass --out a folder on a disk you can write, with room for the images",
        ) from None
    elapsed = time.perf_counter() - start
    n = sum(spec.counts)
    print(
        f"wrote {n} images ({spec.size}x{spec.size}) to {args.out} in {elapsed:.1f} s "
        f"({elapsed / n:.3f} s/image)",
        file=sys.stderr,
    )
    if args.stats:
        print(stats_table(args.out))
    if args.preview is not None:
        try:
            write_preview(args.out, args.preview)
        except OSError as exc:
            raise DataError(
                f"cannot write the preview ({exc.strerror or type(exc).__name__}); the dataset "
                f"itself is complete in {args.out}",
                args.preview,
                "pass --preview a .png path you can write",
            ) from None
        print(f"preview: {args.preview}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``pscl-synth``: write the synthetic dataset, optionally a preview and a stats table.

    A bad option exits 2 with one message before anything is written; a problem while writing is
    one message and exit 2; a crash one line saying it is a bug (exit 1, ``PSCL_DEBUG=1`` for the
    traceback).
    """
    from pscl.errors import run_command

    return run_command("pscl-synth", lambda: _synth(argv))


if __name__ == "__main__":
    raise SystemExit(main())
