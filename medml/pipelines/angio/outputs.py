"""Clinical outputs of the ``angio`` pipeline: pixel spacing of XA cines, per-frame class areas, the DICOM SEG
segment table and the MOSXAV colours."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medml.data.mosxav import CLASS_NAMES, IGNORE_INDEX, PALETTE
from medml.io import SegmentSpec, write_nifti
from medml.io.codes import ANGIOPLASTY_CATHETER, CATHETER
from medml.io.image import as_palette

SPACING_PATIENT = "PixelSpacing"
SPACING_MAGNIFICATION = "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
SPACING_DETECTOR = "ImagerPixelSpacing"


def dicom_pixel_spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm for areas, and where it came from.

    ``PixelSpacing`` (calibrated, patient plane) is preferred; else ``ImagerPixelSpacing`` (detector plane) divided
    by ``EstimatedRadiographicMagnificationFactor`` when present (an estimate at the isocentre); else the detector
    spacing as is, flagged by its source so areas are labelled detector-plane (they overstate patient areas by the
    magnification, typically 1.2-1.6 in angiography).
    """

    def pair(value: Any) -> tuple[float, float] | None:
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            return None
        return (row, col) if row > 0 and col > 0 else None

    spacing = pair(ds.get("PixelSpacing"))
    if spacing:
        return spacing, SPACING_PATIENT
    imager = pair(ds.get("ImagerPixelSpacing"))
    if imager is None:
        return None, None
    try:
        magnification = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
    except (TypeError, ValueError):
        magnification = 0.0
    if magnification > 0:
        return (imager[0] / magnification, imager[1] / magnification), SPACING_MAGNIFICATION
    return imager, SPACING_DETECTOR


def class_areas(
    labels: np.ndarray,
    names: Sequence[str],
    spacing_mm: Sequence[float] | None,
    frame_times_ms: Sequence[float] | None = None,
    spacing_source: str | None = None,
) -> list[dict[str, Any]]:
    """Per-frame pixel counts per foreground class, and areas when the pixel spacing is known.

    Areas are ``<class>_mm2`` for a patient-plane spacing, ``<class>_mm2_detector`` when ``spacing_source`` is
    plain ``ImagerPixelSpacing`` (detector plane, not corrected for magnification); ``spacing_source`` is recorded
    in a column of its own.
    """
    suffix = "mm2_detector" if spacing_source == SPACING_DETECTOR else "mm2"
    rows = []
    pixel_mm2 = float(spacing_mm[0]) * float(spacing_mm[1]) if spacing_mm else None
    for t, frame in enumerate(labels):
        counts = np.bincount(frame.ravel(), minlength=len(names))
        row: dict[str, Any] = {"frame": t}
        if pixel_mm2 is not None and spacing_source is not None:
            row["spacing_source"] = spacing_source
        if frame_times_ms is not None:
            row["time_ms"] = round(float(frame_times_ms[t]), 3)
        for c in range(1, len(names)):
            row[f"{names[c]}_px"] = int(counts[c])
            if pixel_mm2 is not None:
                row[f"{names[c]}_{suffix}"] = round(int(counts[c]) * pixel_mm2, 4)
        rows.append(row)
    return rows


# Codes of the SEG segments (category, then property type). Vessels: SNOMED CT coronary artery; catheter: SNOMED CT
# catheter. The contrast-filled catheter (MOSXAV's class 2) has no SNOMED CT concept of its own and must not share
# the catheter's code (a reader keys segments by code), so it gets a medml-local code in a private coding scheme
# ("99" prefix, DICOM PS3.3 8.2): 99MEDML / ANGIO-CC "Contrast-filled catheter". Balloons: the inflated balloon of an
# angioplasty balloon catheter, SNOMED CT 310362005 "Angioplasty catheter" (`medml.io.codes.ANGIOPLASTY_CATHETER`).
SEGMENT_CODES = {
    "vessel": ("91723000", "SCT", "Anatomical Structure", "41801008", "SCT", "Coronary artery"),
    "contrast_catheter": ("260787004", "SCT", "Physical object", "ANGIO-CC", "99MEDML", "Contrast-filled catheter"),
    "catheter": ("260787004", "SCT", "Physical object", *CATHETER),
    "balloon": ("260787004", "SCT", "Physical object", *ANGIOPLASTY_CATHETER),
}


def write_labels_nifti(labels: np.ndarray, meta: dict[str, Any], path: Path) -> Path:
    """(T, H, W) labels as the NIfTI that ``medml convert`` writes for the same cine: (x, y, frame), LPS axes in RAS
    (x and y negated) and the reader's pixel spacing (``meta["pixel_spacing"]``, else 1 mm), so the two overlay in
    3D Slicer and ITK-SNAP and medml reads the labels back as a volume."""
    row_mm, col_mm = (meta.get("pixel_spacing") or (1.0, 1.0))[:2]
    return write_nifti(np.ascontiguousarray(labels), np.diag([-float(col_mm), -float(row_mm), 1.0, 1.0]), path)


def segment_table(names: Sequence[str]) -> list[SegmentSpec]:
    """`medml.io.SegmentSpec` per foreground class, in the MOSXAV colours."""
    table = []
    for label, name in enumerate(names):
        if label == 0:
            continue
        code = SEGMENT_CODES.get(name, ("260787004", "SCT", "Physical object", "49062001", "SCT", "Device"))
        table.append(
            SegmentSpec(
                label=label,
                name=name,
                category=code[:3],
                property_type=code[3:],
                color=tuple(PALETTE[label]) if label < len(PALETTE) else None,
            )
        )
    return table


def colourise(labels: np.ndarray) -> np.ndarray:
    """Label ids -> RGB in the MOSXAV colours (ignored pixels white), through medml.io's palette table."""
    return as_palette({**dict(enumerate(PALETTE)), IGNORE_INDEX: (255, 255, 255)})[labels]


def class_legend(fig: Any, labels: Iterable[np.ndarray], names: Sequence[str] = CLASS_NAMES) -> None:
    """A legend under ``fig`` naming, in the colours of `colourise`, each foreground class found in ``labels``."""
    from matplotlib.patches import Patch  # matplotlib only where a figure is drawn

    present = sorted({int(v) for a in labels for v in np.unique(a)} - {0})
    handles = [
        Patch(color=np.asarray(PALETTE[i]) / 255, label=names[i] if i < len(names) else "ignored")
        if i != IGNORE_INDEX
        else Patch(facecolor="white", edgecolor="grey", label="ignored")
        for i in present
        if i < len(PALETTE) or i == IGNORE_INDEX
    ]
    if handles:
        fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))  # room for one row of legend at the bottom
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)


def with_legend(frames: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) grey uint8 frames and their labels, with a strip under the frames that names each class in its
    colour: what the overlay video shows. The strip's labels are 0, so nothing is blended over it."""
    import cv2  # opencv-python-headless: text without a figure per frame

    t, h, w = frames.shape
    classes = [(i, n) for i, n in enumerate(names) if 0 < i < len(PALETTE)]
    scale = max(0.3, w / 900)
    row = int(round(26 * scale)) + 4
    strip = np.full((row * len(classes) + 4, w, 3), 255, np.uint8)
    for k, (i, name) in enumerate(classes):
        top = 4 + k * row
        cv2.rectangle(strip, (4, top), (4 + row - 6, top + row - 6), PALETTE[i], thickness=-1)
        cv2.putText(strip, name.replace("_", " "), (row + 2, top + row - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0))
    rgb = np.concatenate([np.repeat(frames[..., None], 3, axis=-1), np.broadcast_to(strip, (t, *strip.shape))], axis=1)
    padded = np.concatenate([labels, np.zeros((t, strip.shape[0], w), labels.dtype)], axis=1)
    return np.ascontiguousarray(rgb), padded
