"""2D DICOM images and cines (multi-frame objects shown frame by frame): display LUTs and frame timing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medml.errors import CorruptFileError, ReadError
from medml.io.dicom.header import common_meta, float_values, header_int, number_of_frames, read_dataset, tag_value
from medml.io.dicom.pixels import decode_pixels, pixel_format, rescale_params
from medml.io.guard import reading
from medml.io.types import Image2D, Video


def frame_times_ms(ds: Dataset, n: int) -> tuple[np.ndarray, float, bool]:
    """Start time of each frame in ms, the frame rate, and whether the timing came from the file.

    Uses FrameTimeVector (increments, first entry 0), FrameTime, CineRate or RecommendedDisplayFrameRate, in that
    order; without any of them 1 frame per second is assumed (and reported as not from the file).
    A value that is not a positive finite number (text, NaN, 0) counts as absent, so the next source is used.
    """
    vector = float_values(_optional(ds, "FrameTimeVector"))
    if vector is not None and len(vector) == n and np.all(np.isfinite(vector)) and min(vector[1:], default=0) >= 0:
        increments = np.asarray(vector)
        times = np.cumsum(increments) - increments[0]
        mean = float(np.mean(increments[1:])) if n > 1 else 0.0
        return times, (1000.0 / mean if mean > 0 else 0.0), True
    frame_time = _positive(_optional(ds, "FrameTime"))
    if frame_time is not None:
        return np.arange(n) * frame_time, 1000.0 / frame_time, True
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(_optional(ds, key))
        if rate is not None:
            return np.arange(n) * 1000.0 / rate, rate, True
    return np.arange(n) * 1000.0, 1.0, False


def _optional(ds: Dataset, key: str) -> object:
    """A tag's value, or None when absent or not convertible (a malformed value counts as absent)."""
    try:
        return tag_value(ds, key)
    except CorruptFileError:
        return None


def _positive(value: object) -> float | None:
    """A one-valued tag as a positive finite float, or None."""
    values = float_values(value)
    if values is None or len(values) != 1 or not math.isfinite(values[0]) or values[0] <= 0:
        return None
    return values[0]


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) mm from PixelSpacing or ImagerPixelSpacing; None when absent or not two positive numbers."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        values = float_values(_optional(ds, key))
        if values and len(values) >= 2 and all(math.isfinite(v) and v > 0 for v in values[:2]):
            return values[0], values[1]
    return None


def to_display(arr: np.ndarray, ds: Dataset, *, voi: bool) -> np.ndarray:
    """Modality LUT, optional VOI LUT/window, and MONOCHROME1 inversion so bright means dense everywhere."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        return arr
    rescale_params(ds)  # refuses a non-numeric, infinite or zero slope before pydicom's LUT code meets it
    out = apply_modality_lut(arr, ds) if ("RescaleSlope" in ds or "ModalityLUTSequence" in ds) else arr
    if voi and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        if out.dtype.kind == "f" and "VOILUTSequence" in ds and np.array_equal(out, np.round(out)):
            out = out.astype(np.int64)  # an identity rescale returns floats; a LUT is indexed by integers
        out = apply_voi_lut(out, ds, prefer_lut=True)
    if photometric == "MONOCHROME1":
        # Invert about the output range so the ordering of intensities flips but the range is kept. pydicom's
        # windowing maps into the rescaled stored range, so that range serves with and without a window; a VOI LUT
        # has its own output depth, approximated by the data's range.
        if voi and "VOILUTSequence" in ds and "WindowCenter" not in ds:
            lo, hi = float(np.min(out)), float(np.max(out))
        else:
            bits, signed = pixel_format(ds)
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            slope, intercept = rescale_params(ds)
            lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        inverted = (hi + lo) - out.astype(np.float64)
        out = inverted.astype(np.int32) if out.dtype.kind in "iu" and float(hi + lo).is_integer() else inverted
        out = out.astype(np.float32) if out.dtype.kind == "f" else out
    if out.dtype == np.float64:
        out = out.astype(np.float32)  # pydicom's LUT functions return float64; float32 keeps every stored value exact
    return out


def read_dicom_image(path: str | Path, *, voi: bool = False, frame: int = 0) -> Image2D:
    """A 2D DICOM image (DX, CR, MG, ophthalmic photograph, secondary capture, one CT/MR slice).

    Grey images get the modality LUT (rescale), optionally the VOI LUT/window, and MONOCHROME1 is inverted;
    colour images come back as RGB uint8/uint16 (YBR converted, palette expanded).

    Args:
        path: the file.
        voi: apply the VOI LUT or window stored in the file (for display-like inputs).
        frame: which frame of a multi-frame object.
    """
    path = Path(path)
    with reading(path, "DICOM image"):
        return _read_dicom_image(path, voi, frame)


def _read_dicom_image(path: Path, voi: bool, frame: int) -> Image2D:
    ds = read_dataset(path)
    arr = decode_pixels(ds, path)
    n = number_of_frames(ds)
    if n > 1:
        if not 0 <= frame < n:
            raise ReadError(f"frame {frame} out of range (object has {n})", path)
        arr = arr[frame]
    arr = to_display(arr, ds, voi=voi)
    meta = common_meta(ds)
    meta["SOPInstanceUID"] = str(ds.get("SOPInstanceUID", ""))
    meta["PhotometricInterpretation"] = str(ds.get("PhotometricInterpretation", ""))
    return Image2D(np.ascontiguousarray(arr), pixel_spacing(ds), meta)


def read_dicom_video(path: str | Path, *, voi: bool = False) -> Video:
    """A multi-frame DICOM (XA/XRF cine, US cine, any multi-frame) as (T, H, W[, 3]) frames with frame times."""
    path = Path(path)
    with reading(path, "DICOM cine"):
        return _read_dicom_video(path, voi)


def _read_dicom_video(path: Path, voi: bool) -> Video:
    ds = read_dataset(path)
    arr = decode_pixels(ds, path)
    n = number_of_frames(ds)
    colour = header_int(ds, "SamplesPerPixel", 1, path) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    if n == 1:
        arr = arr[None]
    if arr.ndim != (4 if colour else 3):
        raise CorruptFileError(f"unexpected pixel array shape {arr.shape} for {n} frames", path)
    arr = to_display(arr, ds, voi=voi)
    times, fps, timed = frame_times_ms(ds, n)
    meta = common_meta(ds)
    meta["SOPInstanceUID"] = str(ds.get("SOPInstanceUID", ""))
    meta["frame_time_from_file"] = timed
    spacing = pixel_spacing(ds)
    if spacing:
        meta["pixel_spacing"] = spacing
    return Video(np.ascontiguousarray(arr), times.astype(np.float64), float(fps), meta)
