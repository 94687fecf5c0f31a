"""Record types returned by the `medml.io` readers.

Every reader returns an array together with the metadata a pipeline or a writer needs to put results back where
they came from: spacing and orientation for images and volumes, frame times for videos, sampling rate and lead
names for ECGs, and the DICOM UIDs of the source so DICOM SEG/SR outputs can reference it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Every case kind `discover` can return.
CASE_KINDS = (
    "dicom_series",
    "dicom_multiframe",
    "dicom_image",
    "dicom_ecg",
    "nifti",
    "mha",
    "nrrd",
    "image",
    "video",
    "frames",
    "wfdb",
)

#: Standard 12-lead order; every `EcgRecord` uses it whatever the source order.
STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# DICOM patient coordinates are LPS, nibabel's are RAS: flipping x and y converts between them.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Case:
    """One input unit found by `discover`: a series, a file, a WFDB record or a folder of frames.

    Attributes:
        case_id: output name derived from the relative path (safe characters, unique within one discovery,
            never the patient name or ID).
        kind: one of `CASE_KINDS`.
        paths: the files that make up the case (all slices of a series; ``.hea`` and ``.dat`` of a WFDB record).
        meta: what discovery learned on the way (SeriesInstanceUID, Modality, number of files, ...).
    """

    case_id: str
    kind: str
    paths: list[Path]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The one path that names the case (the series folder, the file, the record without extension)."""
        if self.kind == "wfdb":
            return self.paths[0].with_suffix("")
        if self.kind in ("dicom_series", "frames"):
            return self.paths[0].parent
        return self.paths[0]


@dataclass
class Volume:
    """A 3D image with its patient-space geometry.

    Attributes:
        array: voxels in (z, y, x) order, as SimpleITK's ``GetArrayFromImage`` returns them.
        spacing: (x, y, z) voxel size in mm.
        origin: (x, y, z) LPS position of the centre of voxel (0, 0, 0) in mm.
        direction: 3x3 direction cosines in SimpleITK's convention (column i is the LPS direction of index axis i).
        meta: source metadata: Modality, StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID,
            SOPInstanceUIDs (one per slice in array order), ...
        warnings: geometry problems found while reading (uneven spacing, missing slices, gantry tilt).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel (i=x, j=y, k=z) to RAS mm matrix, as nibabel stores it for the transposed (x, y, z) array."""
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(self.direction, float) @ np.diag(self.spacing)
        lps[:3, 3] = self.origin
        ras = np.eye(4)
        ras[:3] = LPS_TO_RAS @ lps[:3]
        return ras

    @classmethod
    def from_affine(cls, array: np.ndarray, affine: np.ndarray, meta: dict[str, Any] | None = None) -> Volume:
        """Build a volume from a (z, y, x) array and a nibabel-style RAS affine."""
        affine = np.asarray(affine, float)
        lps = LPS_TO_RAS @ affine[:3]
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        direction = lps[:3, :3] / np.where(spacing > 0, spacing, 1.0)
        return cls(array, tuple(float(s) for s in spacing), tuple(float(o) for o in lps[:3, 3]), direction, meta or {})


@dataclass
class Image2D:
    """A 2D image: HxW (grey) or HxWxC (RGB/RGBA) with pixel spacing (row, column) in mm when known."""

    array: np.ndarray
    spacing: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Video:
    """A sequence of frames: (T, H, W) grey or (T, H, W, 3) RGB, with the acquisition time of each frame."""

    frames: np.ndarray
    frame_times_ms: np.ndarray
    fps: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EcgRecord:
    """A 12-lead ECG: ``signal`` (12, n) float32 in mV in `STANDARD_LEADS` order, sampled at ``fs`` Hz."""

    signal: np.ndarray
    fs: float
    lead_names: tuple[str, ...] = STANDARD_LEADS
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.fs


def as_path(case_or_path: Case | str | Path) -> Path:
    """The path a reader should open for a `Case` or a plain path."""
    return case_or_path.path if isinstance(case_or_path, Case) else Path(case_or_path)
