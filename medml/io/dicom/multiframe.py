"""Multi-frame objects whose frames are planes in patient space: enhanced CT/MR/PET and RT Dose grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medml.errors import CorruptFileError, GeometryError, UnsupportedFormatError
from medml.io.dicom.geometry import stack_geometry
from medml.io.dicom.header import common_meta, float_values, header_float, number_of_frames, read_dataset
from medml.io.dicom.pixels import (
    apply_rescale,
    decode_pixels,
    output_dtype,
    pixel_format,
    rescale_params,
    rescaled_dtype,
)
from medml.io.types import Volume


def _frame_group(ds: Dataset, index: int, name: str) -> Dataset | None:
    """An item of a functional group macro for one frame (per-frame first, then shared)."""
    for seq_name, pos in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(seq_name)
        if seq and len(seq) > pos and name in seq[pos]:
            items = seq[pos][name].value
            if items:
                return items[0]
    return None


def is_enhanced_volume(ds: Dataset) -> bool:
    """A multi-frame object whose frames are planes in patient space: enhanced CT/MR/PET (per-frame plane
    positions) or a frame stack on one grid (RT Dose and others with GridFrameOffsetVector)."""
    if number_of_frames(ds) <= 1:
        return False
    if _frame_group(ds, 0, "PlanePositionSequence") is not None:
        return True
    return "GridFrameOffsetVector" in ds and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds


def _grid_frame_positions(ds: Dataset, path: str | Path) -> np.ndarray:
    """Frame positions of a GridFrameOffsetVector stack: offsets along the normal from the first frame (PS3.3
    C.8.8.3.2; the absolute form, whose first offset equals the z of ImagePositionPatient, reduces to the same)."""
    offsets = np.asarray(float_values(ds.GridFrameOffsetVector) or (), float)
    if len(offsets) != number_of_frames(ds):
        raise GeometryError(f"{len(offsets)} grid frame offsets for {number_of_frames(ds)} frames", path)
    orientation = np.asarray(float_values(ds.ImageOrientationPatient) or (), float)
    origin = np.asarray(float_values(ds.ImagePositionPatient) or (), float)
    if orientation.shape != (6,) or origin.shape != (3,) or not np.all(np.isfinite(offsets)):
        raise GeometryError("grid stack needs 6 orientation values, 3 position values and finite offsets", path)
    normal = np.cross(orientation[:3], orientation[3:])
    return origin + (offsets - offsets[0])[:, None] * normal


def read_multiframe_volume(path: str | Path, *, strict: bool = False, ds: Dataset | None = None) -> Volume:
    """Read an enhanced (functional-group) multi-frame CT/MR into a `Volume` sorted along the slice normal."""
    path = Path(path)
    ds = ds if ds is not None else read_dataset(path)
    if not is_enhanced_volume(ds):
        raise UnsupportedFormatError("multi-frame object without plane positions (a cine? use read_video)", path)
    n = number_of_frames(ds)
    if _frame_group(ds, 0, "PlanePositionSequence") is None:
        return _read_grid_stack(ds, path, strict)
    positions, slopes = [], []
    for i in range(n):
        pos = _frame_group(ds, i, "PlanePositionSequence")
        positions.append(float_values(pos.get("ImagePositionPatient")) if pos is not None else None)
        pvt = _frame_group(ds, i, "PixelValueTransformationSequence")
        if pvt is None:
            slopes.append((1.0, 0.0))
        else:
            slope = header_float(pvt.get("RescaleSlope"), "RescaleSlope", 1.0, path)
            if slope == 0:
                raise CorruptFileError(f"RescaleSlope of frame {i + 1} is 0", path)
            slopes.append((slope, header_float(pvt.get("RescaleIntercept"), "RescaleIntercept", 0.0, path)))
    orient = _frame_group(ds, 0, "PlaneOrientationSequence")
    measures = _frame_group(ds, 0, "PixelMeasuresSequence")
    if orient is None or any(p is None for p in positions):
        raise GeometryError("multi-frame object lacks plane orientation or position for some frames", path)
    spacing = float_values(measures.get("PixelSpacing")) if measures is not None else None
    geometry = stack_geometry(
        np.array(positions), float_values(orient.ImageOrientationPatient), spacing or (1.0, 1.0), path, strict=strict
    )
    stored = decode_pixels(ds, path)
    # One type for all frames' rescales: frames may differ in slope or intercept (float32 if one is fractional).
    dtype = rescaled_dtype({(*pixel_format(ds), s, c) for s, c in slopes})
    volume = np.empty(stored.shape, dtype)
    for i, (s, c) in enumerate(slopes):
        apply_rescale(stored[i], s, c, volume[i])
    volume = volume[geometry.order]
    meta = common_meta(ds)
    meta["SOPInstanceUIDs"] = [str(ds.SOPInstanceUID)] * n
    meta["frame_numbers"] = [int(i) + 1 for i in geometry.order]  # 1-based, as ReferencedFrameNumber counts
    meta["n_files"] = 1
    return Volume(volume, geometry.spacing, geometry.origin, geometry.direction, meta, geometry.warnings)


def _read_grid_stack(ds: Dataset, path: Path, strict: bool) -> Volume:
    """RT Dose-style multi-frame: one IPP/IOP plus GridFrameOffsetVector. Stored values are returned with the
    modality rescale only, as SimpleITK does; DoseGridScaling (Gy per unit) is reported in ``meta``."""
    geometry = stack_geometry(
        _grid_frame_positions(ds, path),
        float_values(ds.ImageOrientationPatient),
        float_values(ds.get("PixelSpacing")) or (1.0, 1.0),
        path,
        strict=strict,
    )
    stored = decode_pixels(ds, path)
    slope, intercept = rescale_params(ds)
    volume = np.empty(stored.shape, output_dtype(ds, slope, intercept))
    apply_rescale(stored, slope, intercept, volume)
    volume = volume[geometry.order]
    meta = common_meta(ds)
    meta["SOPInstanceUIDs"] = [str(ds.SOPInstanceUID)] * len(geometry.order)
    meta["frame_numbers"] = [int(i) + 1 for i in geometry.order]
    meta["n_files"] = 1
    if "DoseGridScaling" in ds:
        meta["DoseGridScaling"] = header_float(ds.DoseGridScaling, "DoseGridScaling", 1.0, path)
    return Volume(volume, geometry.spacing, geometry.origin, geometry.direction, meta, geometry.warnings)
