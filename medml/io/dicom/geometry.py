"""Slice stacks in patient space: sort along the normal and derive spacing, origin and direction as ITK does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medml.errors import GeometryError

# Tolerances for geometry checks, relative to the slice spacing (GDCM and dcm2niix use similar ones).
POSITION_TOLERANCE = 0.01
ORIENTATION_TOLERANCE = 1e-4


@dataclass
class StackGeometry:
    order: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    warnings: list[str]


def stack_geometry(
    positions: np.ndarray,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    path: str | Path,
    *,
    strict: bool = False,
) -> StackGeometry:
    """Sort slices along the slice normal and derive spacing, origin and direction as SimpleITK does.

    Args:
        positions: (n, 3) ImagePositionPatient of each slice (any order).
        orientation: ImageOrientationPatient shared by the slices.
        pixel_spacing: PixelSpacing (row spacing, column spacing).
        path: named in errors.
        strict: raise `GeometryError` for uneven spacing, missing slices and tilt instead of warning.

    Raises:
        GeometryError: fewer than two slices, duplicate positions (or any problem if ``strict``).
    """
    try:
        positions = np.asarray(positions, float)
    except (TypeError, ValueError):
        raise GeometryError("ImagePositionPatient must hold 3 numbers in every slice", path) from None
    n = len(positions)
    if n < 2:
        raise GeometryError(f"series has {n} slice; a volume needs at least 2", path)
    if positions.shape != (n, 3) or not np.all(np.isfinite(positions)):
        raise GeometryError("ImagePositionPatient must hold 3 finite numbers in every slice", path)
    if orientation is None or len(orientation) != 6 or not np.all(np.isfinite(np.asarray(orientation, float))):
        count = 0 if orientation is None else len(orientation)
        raise GeometryError(f"ImageOrientationPatient must hold 6 finite numbers (found {count} values)", path)
    if (
        pixel_spacing is None
        or len(pixel_spacing) < 2
        or not all(math.isfinite(float(s)) and float(s) > 0 for s in pixel_spacing[:2])
    ):
        raise GeometryError(f"PixelSpacing must be two positive numbers, not {tuple(pixel_spacing or ())}", path)
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    if not math.isclose(np.linalg.norm(normal), 1.0, abs_tol=1e-3):
        raise GeometryError("ImageOrientationPatient rows and columns are not orthonormal", path)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    sorted_pos, sorted_along = positions[order], along[order]
    steps = np.diff(sorted_along)
    median_step = float(np.median(steps))
    problems: list[str] = []
    tolerance = max(POSITION_TOLERANCE * abs(median_step), 1e-3)
    if np.any(steps < tolerance) or median_step <= 0:
        dup = int(np.sum(steps < tolerance))
        raise GeometryError(f"{dup} duplicate slice positions (several acquisitions or echoes in one series?)", path)
    # ITK spreads the first-to-last distance evenly over the slices; uneven steps only show up as a warning.
    total = np.linalg.norm(sorted_pos[-1] - sorted_pos[0])
    z_spacing = float(total / (n - 1))
    if np.max(np.abs(steps - median_step)) > tolerance:
        gaps = steps / median_step
        missing = int(np.sum(np.round(gaps) - 1)) if np.all(np.abs(gaps - np.round(gaps)) < 0.05) else 0
        if missing > 0:
            problems.append(f"{missing} missing slice(s): gaps of {np.round(gaps).max():.0f}x the slice spacing")
        else:
            problems.append(
                f"uneven slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm (median {median_step:.4g})"
            )
    offset_dir = (sorted_pos[-1] - sorted_pos[0]) / max(total, 1e-12)
    tilt = math.degrees(math.acos(min(1.0, abs(float(offset_dir @ normal)))))
    if tilt > 0.05:
        problems.append(f"gantry tilt of {tilt:.2f} degrees: slices are sheared, resample before use")
    if strict and problems:
        raise GeometryError("; ".join(problems), path)
    direction = np.stack([row, col, normal], axis=1)
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), z_spacing)
    return StackGeometry(order, spacing, tuple(float(v) for v in sorted_pos[0]), direction, problems)


def permute_slices_in_place(array: np.ndarray, order: np.ndarray) -> None:
    """array[:] = array[order] with one slice of scratch memory instead of a full copy."""
    done = np.zeros(len(order), bool)
    scratch = np.empty_like(array[0])
    for start in range(len(order)):
        if done[start] or order[start] == start:
            done[start] = True
            continue
        scratch[...] = array[start]
        i = start
        while True:
            j = int(order[i])
            done[i] = True
            if j == start:
                array[i] = scratch
                break
            array[i] = array[j]
            i = j
