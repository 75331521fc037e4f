"""pscl.quantify: phase fractions, particles, summaries, tables and the figure, on masks of known content."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pscl.quantify import (PARTICLE_COLUMNS, PHASE_COLUMNS, particle_rows, phase_rows, plot_summary,
                           summary_columns, summary_rows, write_csv)

CLASSES = ["matrix", "gamma", "delta"]
HEIGHT, WIDTH, CELL = 120, 160, 40
SPECKS = [((38, 38), 1), ((38, 78), 2), ((78, 118), 1), ((118, 58), 2)]


def disks() -> list[dict]:
    """12 disks, radii 4..15, one per 40-px cell, classes 1 and 2 alternating; the r=7 one touches the right edge."""
    out = []
    for i in range(12):
        r, row, col = 4 + i, i // 4, i % 4
        cy, cx = CELL * row + CELL // 2, CELL * col + CELL // 2
        if r == 7:
            cx = WIDTH - 1 - r
        out.append({"r": r, "cy": cy, "cx": cx, "cls": 1 + i % 2, "border": r == 7})
    return out


def disk_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for d in disks():
        mask[(yy - d["cy"]) ** 2 + (xx - d["cx"]) ** 2 <= d["r"] ** 2] = d["cls"]
    for (y, x), c in SPECKS:
        mask[y, x] = c
    return mask


def disk_area(d: dict) -> int:
    yy, xx = np.mgrid[-d["r"]:d["r"] + 1, -d["r"]:d["r"] + 1]
    return int((yy ** 2 + xx ** 2 <= d["r"] ** 2).sum())


def test_particles_of_known_disks():
    rows = particle_rows("disks", disk_mask(), CLASSES, None)
    for c in (1, 2):
        ids = [r["particle"] for r in rows if r["class"] == CLASSES[c]]
        assert ids == list(range(1, 6 + 2 + 1))  # 6 disks + 2 specks per class, numbered 1..8
    big = [r for r in rows if r["area_px"] > 1]
    assert len(big) == 12
    for d in disks():
        [row] = [r for r in big
                 if abs(r["centroid_x_px"] - d["cx"]) < 1e-6 and abs(r["centroid_y_px"] - d["cy"]) < 1e-6]
        assert row["class"] == CLASSES[d["cls"]]
        assert row["area_px"] == disk_area(d)
        assert abs(row["area_px"] - math.pi * d["r"] ** 2) <= math.pi * (d["r"] + 0.25)  # |eqd - 2r| <= 1
        assert abs(row["equivalent_diameter_px"] - 2 * d["r"]) <= 1
        assert abs(row["major_axis_px"] - row["minor_axis_px"]) < 0.05 * d["r"]
        assert row["aspect_ratio"] == pytest.approx(1, abs=0.05)
        assert row["touches_border"] is d["border"]
        assert row["area_um2"] is None and row["equivalent_diameter_um"] is None and row["centroid_x_um"] is None
    specks = [r for r in rows if r["area_px"] == 1]
    assert len(specks) == 4 and not any(r["touches_border"] for r in specks)
    assert all(r["aspect_ratio"] is None for r in specks)  # minor axis 0


def test_min_area_and_class_choice():
    mask = disk_mask()
    rows = particle_rows("disks", mask, CLASSES, None, min_area_px=2)
    assert [sum(r["class"] == CLASSES[c] for r in rows) for c in (1, 2)] == [6, 6]
    assert min(r["area_px"] for r in rows) == disk_area({"r": 4})
    only_delta = particle_rows("disks", mask, CLASSES, None, min_area_px=2, classes=[2])
    assert {r["class"] for r in only_delta} == {"delta"} and len(only_delta) == 6
    [matrix] = particle_rows("disks", mask, CLASSES, None, classes=[0])
    assert matrix["area_px"] == (mask == 0).sum() and matrix["touches_border"] is True


def test_connectivity_and_border_edges():
    mask = np.zeros((6, 6), np.uint8)
    mask[2, 2] = mask[3, 3] = 1  # diagonal neighbours
    mask[5, 0] = 1  # bottom-left corner
    assert len(particle_rows("d", mask, CLASSES, None, connectivity=1)) == 3
    rows = particle_rows("d", mask, CLASSES, None, connectivity=2)
    assert [r["area_px"] for r in rows] == [2, 1]
    assert [r["touches_border"] for r in rows] == [False, True]


def test_pixel_size_scales_lengths_and_areas():
    mask, s = disk_mask(), 0.25
    px, um = particle_rows("disks", mask, CLASSES, None), particle_rows("disks", mask, CLASSES, s)
    assert len(px) == len(um)
    for a, b in zip(px, um):
        for key in ("area_px", "equivalent_diameter_px", "major_axis_px", "perimeter_px", "centroid_x_px"):
            assert a[key] == b[key]
        assert b["area_um2"] == pytest.approx(a["area_px"] * s * s)
        for name in ("equivalent_diameter", "major_axis", "minor_axis", "perimeter", "centroid_x", "centroid_y"):
            assert b[f"{name}_um"] == pytest.approx(a[f"{name}_px"] * s)
    phases = phase_rows("disks", mask, CLASSES, s)
    assert [p["area_um2"] for p in phases] == pytest.approx([p["area_px"] * s * s for p in phases])
    assert all(p["area_um2"] is None for p in phase_rows("disks", mask, CLASSES, None))


def test_phase_fractions_exclude_ignored_pixels():
    mask = disk_mask()
    mask[:10, :20] = 255
    rows = phase_rows("disks", mask, CLASSES, None)
    assert [r["class"] for r in rows] == CLASSES
    kept = HEIGHT * WIDTH - 200
    for c, row in enumerate(rows):
        assert row["area_px"] == (mask == c).sum()
        assert row["area_fraction"] == pytest.approx((mask == c).sum() / kept)
    assert sum(r["area_fraction"] for r in rows) == pytest.approx(1)
    absent = phase_rows("plain", np.zeros((4, 4), np.uint8), CLASSES, None)
    assert [r["area_fraction"] for r in absent] == [1, 0, 0] and [r["area_px"] for r in absent] == [16, 0, 0]
    ignored = phase_rows("blank", np.full((4, 4), 255, np.uint8), CLASSES, None)
    assert [r["area_fraction"] for r in ignored] == [0, 0, 0]


@pytest.mark.parametrize("mask", [np.array([[0, 3]], np.uint8), np.array([[0, -1]], np.int16)])
def test_bad_mask_values_name_the_image(mask):
    with pytest.raises(ValueError, match="sample_07"):
        phase_rows("sample_07", mask, CLASSES, None)
    with pytest.raises(ValueError, match="sample_07"):
        particle_rows("sample_07", mask, CLASSES, None)


@pytest.mark.parametrize("mask", [np.zeros((2, 2), np.float32), np.zeros((2, 2, 3), np.uint8)])
def test_mask_must_be_2d_integer(mask):
    with pytest.raises(ValueError, match="sample_07"):
        phase_rows("sample_07", mask, CLASSES, None)


def hand_example() -> tuple[list[dict], list[dict], list[dict]]:
    names = ["matrix", "gamma"]
    fractions = {"a": 0.2, "b": 0.4, "c": 0.1}
    phases = [{"image": i, "class": n, "area_fraction": f if n == "gamma" else 1 - f,
               "area_px": round(100 * (f if n == "gamma" else 1 - f))} for i, f in fractions.items() for n in names]
    particles = [{"image": i, "class": "gamma", "equivalent_diameter_px": d, "equivalent_diameter_um": u}
                 for i, d, u in [("a", 2.0, 1.0), ("a", 4.0, 2.0), ("b", 6.0, 3.0), ("c", 8.0, None)]]
    images = [{"image": "a", "group": "g1", "pixel_size_um": 0.5, "height": 10, "width": 10},
              {"image": "b", "group": "g1", "pixel_size_um": 0.5, "height": 10, "width": 10},
              {"image": "c", "group": None, "pixel_size_um": None, "height": 10, "width": 10}]
    return phases, particles, images


def test_summary_by_hand():
    phases, particles, images = hand_example()
    rows = summary_rows(phases, particles, images, ["matrix", "gamma"])
    assert [(r["level"], r["name"], r["images"], r["unit"]) for r in rows] == [
        ("image", "a", 1, "um"), ("image", "b", 1, "um"), ("image", "c", 1, "px"),
        ("group", "g1", 2, "um"), ("group", "(no group)", 1, "px"), ("all", "all", 3, "px")]
    a, _, c, g1, none, everything = rows
    assert a["fraction_gamma_mean"] == pytest.approx(0.2) and a["fraction_gamma_std"] == 0
    assert a["count_gamma"] == 2 and a["density_gamma"] == pytest.approx(2 / 25) and a["mean_diameter_gamma"] == 1.5
    assert g1["fraction_gamma_mean"] == pytest.approx(0.3) and g1["fraction_gamma_std"] == pytest.approx(0.1)
    assert g1["fraction_matrix_mean"] == pytest.approx(0.7) and g1["fraction_matrix_std"] == pytest.approx(0.1)
    assert g1["count_gamma"] == 1.5
    assert g1["density_gamma"] == pytest.approx(3 / 50)  # 3 particles over 2 x 100 px x 0.25 µm²
    assert g1["mean_diameter_gamma"] == pytest.approx(2.0)  # µm
    assert none["density_gamma"] == pytest.approx(1 / 100 * 1e6) and none["mean_diameter_gamma"] == 8
    mean = (0.2 + 0.4 + 0.1) / 3
    assert everything["fraction_gamma_mean"] == pytest.approx(mean)
    std = math.sqrt(sum((f - mean) ** 2 for f in (0.2, 0.4, 0.1)) / 3)  # population std, ddof = 0
    assert everything["fraction_gamma_std"] == pytest.approx(std)
    assert everything["count_gamma"] == pytest.approx(4 / 3)
    assert everything["density_gamma"] == pytest.approx(4 / 300 * 1e6)  # per megapixel: c has no pixel size
    assert everything["mean_diameter_gamma"] == pytest.approx(5.0)  # px: (2 + 4 + 6 + 8) / 4
    assert set(summary_columns(["matrix", "gamma"])) == set(a)
    assert c["mean_diameter_gamma"] == 8


def test_summary_without_particles_has_no_diameter():
    phases = phase_rows("x", np.zeros((8, 8), np.uint8), CLASSES, None)
    rows = summary_rows(phases, [], [{"image": "x", "group": None, "pixel_size_um": None, "height": 8, "width": 8}],
                        CLASSES)
    assert rows[-1]["count_gamma"] == 0 and rows[-1]["density_gamma"] == 0
    assert rows[-1]["mean_diameter_gamma"] is None and rows[-1]["mean_diameter_delta"] is None


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_csv_round_trip(tmp_path):
    rows = particle_rows("disks", disk_mask(), CLASSES, None)
    path = write_csv(tmp_path / "particles.csv", rows, PARTICLE_COLUMNS)
    header, back = read_csv(path)
    assert header == PARTICLE_COLUMNS and len(back) == len(rows)
    for row, text in zip(rows, back):
        assert text["image"] == "disks" and text["class"] == row["class"]
        assert int(text["area_px"]) == row["area_px"] and int(text["particle"]) == row["particle"]
        assert float(text["equivalent_diameter_px"]) == pytest.approx(row["equivalent_diameter_px"], rel=1e-5)
        assert text["touches_border"] == str(row["touches_border"])
        assert text["area_um2"] == "" and text["centroid_y_um"] == ""
        if row["aspect_ratio"] is None:
            assert text["aspect_ratio"] == ""
        else:
            assert float(text["aspect_ratio"]) == pytest.approx(row["aspect_ratio"], rel=1e-5)
    assert not (tmp_path / "particles.csv").read_text().startswith("#")
    write_csv(tmp_path / "phases.csv", [{"image": "i", "class": "gamma", "area_fraction": 1 / 3, "area_px": 7,
                                         "area_um2": None}], PHASE_COLUMNS)
    assert (tmp_path / "phases.csv").read_text().splitlines() == [",".join(PHASE_COLUMNS), "i,gamma,0.333333,7,"]
    assert not (tmp_path / "phases.txt").exists()


def test_plot_summary_with_and_without_particles(tmp_path):
    mask = disk_mask()
    info = [{"image": "disks", "group": "g", "pixel_size_um": 0.1, "height": HEIGHT, "width": WIDTH},
            {"image": "plain", "group": "h", "pixel_size_um": 0.1, "height": 8, "width": 8}]
    phases = phase_rows("disks", mask, CLASSES, 0.1) + phase_rows("plain", np.zeros((8, 8), np.uint8), CLASSES, 0.1)
    particles = particle_rows("disks", mask, CLASSES, 0.1)
    full = plot_summary(tmp_path / "with.png", summary_rows(phases, particles, info, CLASSES), particles, CLASSES)
    empty_phases = phases[len(CLASSES):]
    empty = plot_summary(tmp_path / "empty.png", summary_rows(empty_phases, [], info[1:], CLASSES), [], CLASSES)
    for path in (full, empty):
        assert path.stat().st_size > 1000
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
