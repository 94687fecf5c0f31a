"""2D DICOM images and cines (multi-frame objects shown frame by frame): display LUTs and frame timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medml.errors import CorruptFileError, ReadError
from medml.io.dicom.header import common_meta, float_values, number_of_frames, read_dataset
from medml.io.dicom.pixels import decode_pixels, rescale_params
from medml.io.types import Image2D, Video


def frame_times_ms(ds: Dataset, n: int) -> tuple[np.ndarray, float, bool]:
    """Start time of each frame in ms, the frame rate, and whether the timing came from the file.

    Uses FrameTimeVector (increments, first entry 0), FrameTime, CineRate or RecommendedDisplayFrameRate, in that
    order; without any of them 1 frame per second is assumed (and reported as not from the file).
    """
    vector = ds.get("FrameTimeVector")
    if vector is not None and len(vector) == n:
        increments = np.asarray([float(v) for v in vector])
        times = np.cumsum(increments) - increments[0]
        mean = float(np.mean(increments[1:])) if n > 1 else 0.0
        return times, (1000.0 / mean if mean > 0 else 0.0), True
    frame_time = ds.get("FrameTime")
    if frame_time not in (None, "") and float(frame_time) > 0:
        ft = float(frame_time)
        return np.arange(n) * ft, 1000.0 / ft, True
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = ds.get(key)
        if rate not in (None, "") and float(rate) > 0:
            return np.arange(n) * 1000.0 / float(rate), float(rate), True
    return np.arange(n) * 1000.0, 1.0, False


def to_display(arr: np.ndarray, ds: Dataset, *, voi: bool) -> np.ndarray:
    """Modality LUT, optional VOI LUT/window, and MONOCHROME1 inversion so bright means dense everywhere."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        return arr
    out = apply_modality_lut(arr, ds) if ("RescaleSlope" in ds or "ModalityLUTSequence" in ds) else arr
    if voi and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        out = apply_voi_lut(out, ds, prefer_lut=True)
    if photometric == "MONOCHROME1":
        # Invert about the output range so the ordering of intensities flips but the range is kept. pydicom's
        # windowing maps into the rescaled stored range, so that range serves with and without a window; a VOI LUT
        # has its own output depth, approximated by the data's range.
        if voi and "VOILUTSequence" in ds and "WindowCenter" not in ds:
            lo, hi = float(np.min(out)), float(np.max(out))
        else:
            bits = int(ds.get("BitsStored", 16))
            signed = int(ds.get("PixelRepresentation", 0)) == 1
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
    ds = read_dataset(path)
    arr = decode_pixels(ds, path)
    n = number_of_frames(ds)
    if n > 1:
        if not 0 <= frame < n:
            raise ReadError(f"frame {frame} out of range (object has {n})", path)
        arr = arr[frame]
    arr = to_display(arr, ds, voi=voi)
    spacing = float_values(ds.get("PixelSpacing")) or float_values(ds.get("ImagerPixelSpacing"))
    meta = common_meta(ds)
    meta["SOPInstanceUID"] = str(ds.get("SOPInstanceUID", ""))
    meta["PhotometricInterpretation"] = str(ds.get("PhotometricInterpretation", ""))
    return Image2D(np.ascontiguousarray(arr), tuple(spacing[:2]) if spacing else None, meta)


def read_dicom_video(path: str | Path, *, voi: bool = False) -> Video:
    """A multi-frame DICOM (XA/XRF cine, US cine, any multi-frame) as (T, H, W[, 3]) frames with frame times."""
    path = Path(path)
    ds = read_dataset(path)
    arr = decode_pixels(ds, path)
    n = number_of_frames(ds)
    colour = int(ds.get("SamplesPerPixel", 1)) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    if n == 1:
        arr = arr[None]
    if arr.ndim != (4 if colour else 3):
        raise CorruptFileError(f"unexpected pixel array shape {arr.shape} for {n} frames", path)
    arr = to_display(arr, ds, voi=voi)
    times, fps, timed = frame_times_ms(ds, n)
    meta = common_meta(ds)
    meta["SOPInstanceUID"] = str(ds.get("SOPInstanceUID", ""))
    meta["frame_time_from_file"] = timed
    spacing = float_values(ds.get("PixelSpacing")) or float_values(ds.get("ImagerPixelSpacing"))
    if spacing:
        meta["pixel_spacing"] = tuple(spacing[:2])
    return Video(np.ascontiguousarray(arr), times.astype(np.float64), float(fps), meta)
