"""DICOM readers: single-frame series to volumes, multi-frame objects, 2D images and cines.

Decoding goes through pydicom's pixel-data plugins (pylibjpeg with libjpeg/openjpeg/rle, pyjpegls, or gdcm), so
every compressed transfer syntax those packages handle is read; uncompressed little-endian slices take a direct
`numpy.frombuffer` path because it is several times faster than pydicom's generic decoder, and in series their
headers are not even parsed by pydicom (see `_read_native_slice`): series reading is the hot path of CT inference.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medml.errors import (
    AbsurdSizeError,
    CorruptFileError,
    GeometryError,
    MissingDecoderError,
    ReadError,
    UnsupportedFormatError,
)
from medml.io.types import Image2D, Video, Volume

# Larger than any clinical object (a 4k x 4k mammogram, a 2048-slice CT, a 2000-frame cine); anything above is a
# corrupt header, and allocating it would exhaust memory before the decoder could complain.
MAX_ROWS_COLUMNS = 16384
MAX_FRAMES = 20000
MAX_VOXELS = 4 * 1024**3

# Which package decodes which compressed transfer syntax (named in MissingDecoderError).
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pyjpegls (or pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.81": "pyjpegls (or pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (or python-gdcm)",
}
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
OTHER_NATIVE = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated: pydicom decodes both

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
DICOMDIR_STORAGE = "1.2.840.10008.1.3.10"

# Tolerances for geometry checks, relative to the slice spacing (GDCM and dcm2niix use similar ones).
POSITION_TOLERANCE = 0.01
ORIENTATION_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------------------------------------------------
_VRS = {
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FL",
    b"FD",
    b"IS",
    b"LO",
    b"LT",
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"PN",
    b"SH",
    b"SL",
    b"SQ",
    b"SS",
    b"ST",
    b"SV",
    b"TM",
    b"UC",
    b"UI",
    b"UL",
    b"UN",
    b"UR",
    b"US",
    b"UT",
    b"UV",
}


def _looks_like_raw_dataset(head: bytes) -> bool:
    """True for a DICOM dataset written without preamble or meta header: it starts with a group 0008 element
    whose VR (explicit) or length (implicit) is plausible, in either byte order."""
    if len(head) < 12:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(f"{order}HH", head[:4])
        if group != 0x0008 or element == 0 or element > 0x1200:
            continue
        if head[4:6] in _VRS:
            return True
        if struct.unpack(f"{order}I", head[4:8])[0] < 1024:  # implicit VR: a short first value
            return True
    return False


def read_dataset(
    path: str | Path, *, stop_before_pixels: bool = False, specific_tags: list[Any] | None = None
) -> Dataset:
    """Open a DICOM file (with or without preamble), turning every pydicom failure into a `ReadError`.

    Args:
        path: the file.
        stop_before_pixels: parse the header only.
        specific_tags: parse only these tags (faster header scans).

    Raises:
        UnsupportedFormatError: not DICOM.
        CorruptFileError: truncated or malformed.
    """
    path = Path(path)
    if path.is_dir():
        raise UnsupportedFormatError("a folder, not a DICOM file", path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            has_preamble = head[128:132] == b"DICM"
            force = not has_preamble and _looks_like_raw_dataset(head)
            if not has_preamble and not force:
                raise UnsupportedFormatError("not a DICOM file (no DICM prefix, no DICOM tags)", path)
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(
                    fh, force=force, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags
                )
    except ReadError:
        raise
    except InvalidDicomError as exc:
        raise UnsupportedFormatError(f"not a DICOM file ({exc})", path) from None
    except (EOFError, struct.error, ValueError, KeyError, TypeError, IndexError, OverflowError, OSError) as exc:
        raise CorruptFileError(f"truncated or malformed DICOM ({type(exc).__name__}: {exc})", path) from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # Files without meta header: pydicom guessed the encoding while parsing; record it for the decoders.
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        implicit, little = getattr(ds, "original_encoding", (True, True))
        ds.file_meta.TransferSyntaxUID = (
            (pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian)
            if little is not False
            else pydicom.uid.ExplicitVRBigEndian
        )
    return ds


def transfer_syntax(ds: Dataset) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))


def has_pixel_data(ds: Dataset) -> bool:
    return any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def number_of_frames(ds: Dataset) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about malformed IS values such as '1A'
            return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def check_dimensions(ds: Dataset, path: str | Path) -> tuple[int, int, int]:
    """(frames, rows, columns), or `AbsurdSizeError` for dimensions no device produces."""
    rows, cols, frames = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), number_of_frames(ds)
    if not (0 < rows <= MAX_ROWS_COLUMNS and 0 < cols <= MAX_ROWS_COLUMNS and 0 < frames <= MAX_FRAMES):
        raise AbsurdSizeError(f"implausible size: {frames} frames of {rows}x{cols}", path)
    return frames, rows, cols


# --------------------------------------------------------------------------------------------------------------------
# Pixel decoding
# --------------------------------------------------------------------------------------------------------------------
def _fix_unused_bits(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Mask the high bits above BitsStored (overlays live there in old files) and sign-extend signed data."""
    bits_alloc, bits_stored = int(ds.get("BitsAllocated", 16)), int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if arr.dtype.kind not in "iu" or bits_stored >= bits_alloc or bits_stored <= 0:
        return arr
    shift = arr.dtype.itemsize * 8 - bits_stored
    if int(ds.get("PixelRepresentation", 0)) == 1:
        signed = arr.view(arr.dtype.str.replace("u", "i"))
        return (signed << shift) >> shift
    return arr & np.array((1 << bits_stored) - 1, dtype=arr.dtype)


def _native_frame(ds: Dataset, path: str | Path) -> np.ndarray | None:
    """The stored pixels of a one-frame, one-sample, little-endian uncompressed dataset as a read-only view
    (unused high bits not yet masked), or None when pydicom's decoder is needed."""
    if transfer_syntax(ds) not in NATIVE_LITTLE_ENDIAN:
        return None
    get = ds.get
    data, bits = get("PixelData"), get("BitsAllocated", 0)
    if data is None or bits not in (8, 16, 32) or get("SamplesPerPixel", 1) != 1 or number_of_frames(ds) != 1:
        return None
    rows, cols = int(get("Rows")), int(get("Columns"))
    dtype = np.dtype(f"<{'i' if get('PixelRepresentation', 0) == 1 else 'u'}{bits // 8}")
    need = rows * cols * dtype.itemsize
    if len(data) < need:
        raise CorruptFileError(f"truncated pixel data ({len(data)} of {need} bytes)", path)
    return np.frombuffer(data, dtype, rows * cols).reshape(rows, cols)


def decode_into(
    ds: Dataset, path: str | Path, out: np.ndarray, rescale: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Decode one grey frame and write its rescaled values into ``out``; return the (slope, intercept) used.

    The rescale is done in ``out``'s own type, in place: integer wrap-around is exact here because the output type
    is chosen to hold every rescaled value (see `output_dtype`), so no float temporary of the slice is needed.
    """
    raw = _native_frame(ds, path)
    if raw is None:
        stored = decode_pixels(ds, path)
        if stored.shape != out.shape:
            raise GeometryError(f"frame shape {stored.shape} does not match {out.shape}", path)
        np.copyto(out, stored, casting="unsafe")
    else:
        if raw.shape != out.shape:
            raise GeometryError(f"frame shape {raw.shape} does not match {out.shape}", path)
        bits_alloc = raw.dtype.itemsize * 8
        bits_stored = int(ds.get("BitsStored", bits_alloc))
        if bits_stored < bits_alloc and raw.dtype.kind == "u":
            np.bitwise_and(raw, raw.dtype.type((1 << bits_stored) - 1), out=out, casting="unsafe")
        elif bits_stored < bits_alloc:
            np.copyto(out, _fix_unused_bits(raw, ds), casting="unsafe")
        else:
            np.copyto(out, raw, casting="unsafe")
    slope, intercept = rescale if rescale is not None else rescale_params(ds)
    _rescale_in_place(out, slope, intercept)
    return slope, intercept


def decode_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """All frames as stored (before rescale): (rows, cols[, samples]) or (frames, rows, cols[, samples]).

    Colour data comes back as RGB (pydicom converts YBR); PALETTE COLOR is expanded to RGB.

    Raises:
        UnsupportedFormatError: no pixel data.
        MissingDecoderError: compressed with a syntax no installed plugin decodes (names the package).
        CorruptFileError: truncated or undecodable pixel data.
        AbsurdSizeError: implausible dimensions.
    """
    if not has_pixel_data(ds):
        raise UnsupportedFormatError(f"no pixel data ({_sop_class_name(ds)})", path)
    check_dimensions(ds, path)
    native = _native_frame(ds, path)
    if native is not None:
        return native
    ts = transfer_syntax(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
            if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
                from pydicom.pixels import apply_color_lut

                arr = apply_color_lut(arr, ds)
    except (NotImplementedError, RuntimeError, ImportError) as exc:
        message = str(exc)
        if ts not in DECODER_PACKAGES and ts not in NATIVE_LITTLE_ENDIAN and ts not in OTHER_NATIVE:
            raise MissingDecoderError(f"unknown transfer syntax {ts}: no decoder is known for it", path) from None
        if "missing dependencies" in message or "no pixel data decoders available" in message.lower():
            raise MissingDecoderError(
                f"no decoder for transfer syntax {UID(ts).name}: install {DECODER_PACKAGES.get(ts, 'pylibjpeg')}", path
            ) from None
        # Plugins were there but all failed: the data itself is damaged or uses a variant they do not handle.
        hint = " (python-gdcm decodes some files the other plugins reject)" if ts in DECODER_PACKAGES else ""
        reasons = " | ".join(message.splitlines())[:300]
        raise CorruptFileError(f"cannot decode pixel data: {reasons}{hint}", path) from None
    except (ValueError, EOFError, struct.error, KeyError, AttributeError, TypeError, IndexError) as exc:
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CorruptFileError(f"cannot decode pixel data ({message})", path) from None
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))  # big-endian files: torch needs native byte order
    return _fix_unused_bits(arr, ds)


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return UID(str(uid)).name if uid else "unknown SOP class"


def rescale_params(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept) from the dataset, its shared functional groups, or (1, 0)."""
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and intercept is None and "SharedFunctionalGroupsSequence" in ds:
        group = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in group:
            pvt = group.PixelValueTransformationSequence[0]
            slope, intercept = pvt.get("RescaleSlope"), pvt.get("RescaleIntercept")
    return float(slope if slope not in (None, "") else 1.0), float(intercept if intercept not in (None, "") else 0.0)


def pixel_format(ds: Dataset) -> tuple[int, bool]:
    """(BitsStored, signed) of a dataset's stored grey values."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    return bits, int(ds.get("PixelRepresentation", 0)) == 1


def rescaled_range(bits_stored: int, signed: bool, slope: float, intercept: float) -> tuple[float, float]:
    """The lowest and highest value ``stored * slope + intercept`` can take for stored values of this format."""
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    low, high = sorted((lo * slope + intercept, hi * slope + intercept))
    return low, high


def rescaled_dtype(formats: Iterable[tuple[int, bool, float, float]]) -> np.dtype:
    """The smallest type holding every rescaled value of all the given (BitsStored, signed, slope, intercept),
    chosen as GDCM (hence SimpleITK) chooses it for one of them; float32 if any rescale is fractional."""
    low, high, max_bits = math.inf, -math.inf, 0
    for bits, signed, slope, intercept in formats:
        if not (float(slope).is_integer() and float(intercept).is_integer()):
            return np.dtype(np.float32)
        lo, hi = rescaled_range(bits, signed, slope, intercept)
        low, high, max_bits = min(low, lo), max(high, hi), max(max_bits, bits)
    for candidate in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            if max_bits > 8 and np.dtype(candidate).itemsize == 1:
                continue  # GDCM keeps 16-bit storage for >8-bit data
            return np.dtype(candidate)
    return np.dtype(np.float64)


def output_dtype(ds: Dataset, slope: float, intercept: float) -> np.dtype:
    """The smallest type holding every rescaled value of ``ds``, chosen as GDCM (hence SimpleITK) chooses it."""
    return rescaled_dtype([(*pixel_format(ds), slope, intercept)])


def _holds(dtype: np.dtype, bits_stored: int, signed: bool, slope: float, intercept: float) -> bool:
    """Whether ``dtype`` holds every value of this rescale exactly (integer types: only integer rescales)."""
    if dtype.kind == "f":
        return True
    if not (float(slope).is_integer() and float(intercept).is_integer()):
        return False
    info = np.iinfo(dtype)
    low, high = rescaled_range(bits_stored, signed, slope, intercept)
    return info.min <= low and high <= info.max


def _rescale_in_place(out: np.ndarray, slope: float, intercept: float) -> None:
    """``out = out * slope + intercept`` in ``out``'s own type.

    Integer constants are wrapped to ``out``'s width (a negative intercept on unsigned output included): integer
    arithmetic is then exact modulo 2**bits, so the result is right whenever it fits ``out``'s type, which the
    callers ensure (`rescaled_dtype`, `_holds`).
    """
    if out.dtype.kind in "iu":
        scale, shift = (np.array(int(v), dtype=np.int64).astype(out.dtype)[()] for v in (slope, intercept))
    else:
        scale, shift = out.dtype.type(slope), out.dtype.type(intercept)
    if slope != 1.0:
        out *= scale
    if intercept != 0.0:
        out += shift


def apply_rescale(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """Write ``stored * slope + intercept`` into ``out`` (in ``out``'s type, without a float temporary)."""
    np.copyto(out, stored, casting="unsafe")
    _rescale_in_place(out, slope, intercept)


# --------------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------------
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
    positions = np.asarray(positions, float)
    n = len(positions)
    if n < 2:
        raise GeometryError(f"series has {n} slice; a volume needs at least 2", path)
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


def _permute_slices_in_place(array: np.ndarray, order: np.ndarray) -> None:
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


# --------------------------------------------------------------------------------------------------------------------
# Series of single-frame files
# --------------------------------------------------------------------------------------------------------------------
UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
META_KEYS = ("Modality", "SeriesNumber", "SeriesDescription", "Manufacturer", "SOPClassUID", "BodyPartExamined")


def _common_meta(ds: Dataset) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in UID_KEYS + META_KEYS:
        value = ds.get(key)
        if value not in (None, ""):
            meta[key] = str(value) if not isinstance(value, int | float) else value
    return meta


@dataclass
class _SliceHeader:
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    spacing: tuple[float, ...] | None
    sop_uid: str
    shape: tuple[int, int]
    rescale: tuple[float, float]


# Fast path for native little-endian slices. pydicom parses every element of every header in pure Python (about
# 1 ms per CT slice, most of a series read); here the top-level elements are walked with `struct`, only the dozen
# tags a volume needs are decoded, and the pixel data is read from its offset straight into the volume. Anything
# unexpected (other transfer syntaxes, no preamble, odd VRs, encapsulated or truncated data, multi-frame, colour)
# makes it return None and the slice goes through pydicom, which also produces the error message if there is one.
_FAST_TAGS = {
    0x0020000E: "SeriesInstanceUID",
    0x00080018: "SOPInstanceUID",
    0x00280002: "SamplesPerPixel",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
    0x00280030: "PixelSpacing",
    0x00280100: "BitsAllocated",
    0x00280101: "BitsStored",
    0x00280103: "PixelRepresentation",
    0x00281052: "RescaleIntercept",
    0x00281053: "RescaleSlope",
}
# Present means "not a plain slice" (waveforms; rescale possibly in functional groups): leave it to pydicom.
_FAST_REFUSE = {0x54000100, 0x52009229, 0x52009230, 0x7FE00008, 0x7FE00009}
_FAST_VRS = {
    "SeriesInstanceUID": b"UI",
    "SOPInstanceUID": b"UI",
    "NumberOfFrames": b"IS",
    "ImagePositionPatient": b"DS",
    "ImageOrientationPatient": b"DS",
    "PixelSpacing": b"DS",
    "RescaleIntercept": b"DS",
    "RescaleSlope": b"DS",
}  # the rest are US
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset(_VRS) - _LONG_VRS
_EXPLICIT_ELEMENT = struct.Struct("<HH2sH")
_IMPLICIT_ELEMENT = struct.Struct("<HHI")
_UINT32 = struct.Struct("<I")
_UINT16 = struct.Struct("<H")
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_CHUNK = 8192
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"


class _NotFast(Exception):
    """The file is not a plain native little-endian slice; read it with pydicom."""


class _ForwardWindow:
    """Bytes of a file read in chunks as a forward-only walk needs them (large skipped values are never read)."""

    __slots__ = ("fh", "base", "buf")

    def __init__(self, fh: Any) -> None:
        self.fh, self.base, self.buf = fh, 0, fh.read(_CHUNK)

    def at(self, offset: int, size: int) -> tuple[bytes, int]:
        """(buffer, position in it) holding ``size`` bytes from file offset ``offset``."""
        start = offset - self.base
        if start < 0 or start + size > len(self.buf):
            self.fh.seek(offset)
            self.buf, self.base, start = self.fh.read(max(size, _CHUNK)), offset, 0
            if len(self.buf) < size:
                raise _NotFast()
        return self.buf, start


def _next_element(win: _ForwardWindow, offset: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value offset, value length) of the element at ``offset``."""
    buf, i = win.at(offset, 8)
    group, element, length = _IMPLICIT_ELEMENT.unpack_from(buf, i)
    if not explicit or group == 0xFFFE:  # items and delimiters have no VR in either encoding
        return (group << 16) | element, None, offset + 8, length
    vr = buf[i + 4 : i + 6]
    if vr in _SHORT_VRS:
        return (group << 16) | element, vr, offset + 8, _UINT16.unpack_from(buf, i + 6)[0]
    if vr not in _LONG_VRS:
        raise _NotFast()
    buf, i = win.at(offset + 8, 4)
    return (group << 16) | element, vr, offset + 12, _UINT32.unpack_from(buf, i)[0]


def _skip_sequence(win: _ForwardWindow, offset: int, explicit: bool) -> int:
    """Offset after an undefined-length sequence whose first item starts at ``offset``."""
    while True:
        tag, _, offset, length = _next_element(win, offset, explicit)
        if tag == _SEQUENCE_END:
            return offset
        if tag != _ITEM:
            raise _NotFast()
        offset = _skip_item(win, offset, explicit) if length == _UNDEFINED else offset + length


def _skip_item(win: _ForwardWindow, offset: int, explicit: bool) -> int:
    """Offset after an undefined-length item whose first element starts at ``offset``."""
    while True:
        tag, vr, offset, length = _next_element(win, offset, explicit)
        if tag == _ITEM_END:
            return offset
        if length == _UNDEFINED:
            if vr not in (None, b"SQ"):
                raise _NotFast()  # encapsulated data or UN of undefined length
            offset = _skip_sequence(win, offset, explicit)
        else:
            offset += length


def _scan_native_header(fh: Any) -> tuple[dict[str, bytes], int, int]:
    """Top-level values of `_FAST_TAGS` (raw bytes), the pixel data offset and length of a file with preamble and
    native little-endian transfer syntax."""
    win = _ForwardWindow(fh)
    if win.buf[128:132] != b"DICM":
        raise _NotFast()
    offset, syntax = 132, None
    while True:  # file meta group: always explicit VR little endian
        buf, i = win.at(offset, 2)
        if _UINT16.unpack_from(buf, i)[0] != 0x0002:
            break
        tag, vr, value_at, length = _next_element(win, offset, True)
        if length == _UNDEFINED:
            raise _NotFast()
        if tag == 0x00020010:
            buf, i = win.at(value_at, length)
            syntax = buf[i : i + length].rstrip(b"\x00 ").decode("ascii", "replace")
        offset = value_at + length
    if syntax not in NATIVE_LITTLE_ENDIAN:
        raise _NotFast()
    explicit = syntax == "1.2.840.10008.1.2.1"
    values: dict[str, bytes] = {}
    names, refuse = _FAST_TAGS, _FAST_REFUSE
    while True:
        tag, vr, value_at, length = _next_element(win, offset, explicit)
        if tag == _PIXEL_DATA:
            if length == _UNDEFINED or (explicit and vr not in (b"OB", b"OW")):
                raise _NotFast()
            return values, value_at, length
        if tag > _PIXEL_DATA or tag in refuse:
            raise _NotFast()
        if length == _UNDEFINED:
            if vr not in (None, b"SQ"):
                raise _NotFast()
            offset = _skip_sequence(win, value_at, explicit)
            continue
        name = names.get(tag)
        if name is not None:
            if (vr is not None and vr != _FAST_VRS.get(name, b"US")) or length > 1024:
                raise _NotFast()
            buf, i = win.at(value_at, length)
            values[name] = buf[i : i + length]
        offset = value_at + length


def _ds_values(raw: bytes | None) -> tuple[float, ...] | None:
    """A DS (or IS) value as floats, as `_floats` gives for pydicom's value; None if absent or empty."""
    if raw is None:
        return None
    text = raw.decode("ascii").strip(" \x00")
    if not text:
        return None
    return tuple(float(v) for v in text.split("\\"))


def _us_value(raw: bytes | None, default: int) -> int:
    if raw is None:
        return default
    if len(raw) != 2:
        raise _NotFast()
    return _UINT16.unpack(raw)[0]


def _read_native_slice(path: Path, out: np.ndarray, series_uid: str | None) -> _SliceHeader | None:
    """Read one uncompressed little-endian slice into ``out`` (rescaled, in ``out``'s type) without pydicom.

    Returns the slice's header, or None when the file needs pydicom (anything unusual, including every error, which
    pydicom then reports). ``series_uid``: the slice must belong to this series (None: not checked).

    Raises:
        _NeedsFloat: ``out`` is an integer type and the slice has a fractional slope or intercept.
        _NeedsWider: ``out``'s integer type cannot hold every value of the slice's rescale (its slope, intercept
            or stored format differ from those the type was chosen for).
    """
    try:
        with open(path, "rb", buffering=0) as fh:
            values, pixel_at, pixel_length = _scan_native_header(fh)
            get = values.get
            rows, cols = _us_value(get("Rows"), 0), _us_value(get("Columns"), 0)
            bits = _us_value(get("BitsAllocated"), 0)
            bits_stored = _us_value(get("BitsStored"), bits)
            signed = _us_value(get("PixelRepresentation"), 0) == 1
            frames = _ds_values(get("NumberOfFrames"))
            if (
                (rows, cols) != out.shape
                or bits not in (8, 16, 32)
                or not 0 < bits_stored <= bits
                or _us_value(get("SamplesPerPixel"), 1) != 1
                or frames not in (None, (1.0,))
            ):
                raise _NotFast()
            sop_uid = get("SOPInstanceUID", b"").decode("ascii").strip(" \x00")
            if series_uid is not None and get("SeriesInstanceUID", b"").decode("ascii").strip(" \x00") != series_uid:
                raise _NotFast()
            position = _ds_values(get("ImagePositionPatient"))
            if position is None:
                raise _NotFast()
            slope_values, intercept_values = _ds_values(get("RescaleSlope")), _ds_values(get("RescaleIntercept"))
            if any(v is not None and len(v) != 1 for v in (slope_values, intercept_values)):
                raise _NotFast()
            slope = slope_values[0] if slope_values else 1.0
            intercept = intercept_values[0] if intercept_values else 0.0
            _check_holds(out.dtype, bits_stored, signed, slope, intercept)
            stored_dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
            if pixel_length < rows * cols * stored_dtype.itemsize:
                raise _NotFast()  # truncated: pydicom names the problem
            # Read straight into the volume when the stored and output integers have the same width: reinterpreting
            # the bits and rescaling in place wraps exactly as the unsafe cast of the pydicom path does.
            in_place = out.dtype.kind in "iu" and out.dtype.itemsize == stored_dtype.itemsize and _LITTLE_ENDIAN_HOST
            stored = out.view(stored_dtype) if in_place else np.empty(out.shape, stored_dtype)
            header = _SliceHeader(
                position,
                _ds_values(get("ImageOrientationPatient")),
                _ds_values(get("PixelSpacing")),
                sop_uid,
                (rows, cols),
                (slope, intercept),
            )
            fh.seek(pixel_at)
            if fh.readinto(memoryview(stored).cast("B")) != stored.nbytes:
                raise _NotFast()
    except (_NotFast, OSError, ValueError, UnicodeDecodeError, struct.error):
        return None
    if bits_stored < bits:  # overlay bits above BitsStored: mask them, or sign-extend signed data
        if signed:
            shift = bits - bits_stored
            np.left_shift(stored, shift, out=stored)
            np.right_shift(stored, shift, out=stored)
        else:
            np.bitwise_and(stored, stored.dtype.type((1 << bits_stored) - 1), out=stored)
    if not in_place:
        np.copyto(out, stored, casting="unsafe")
    _rescale_in_place(out, slope, intercept)
    return header


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class NotOneSeries(Exception):
    """Raised by ``read_dicom_series(..., require_one_series=True)`` when the files are not one image series."""


def read_dicom_series(
    paths: Sequence[str | Path],
    *,
    strict: bool = False,
    workers: int | None = None,
    folder: str | Path | None = None,
    require_one_series: bool = False,
) -> Volume:
    """Read single-frame slices of one series into a `Volume` equal to SimpleITK's ``ImageSeriesReader``.

    Each file is parsed and decoded straight into its slot of a preallocated array; the slices are then sorted by
    position along the slice normal in place, so peak memory stays near the volume's own size. Uncompressed
    little-endian slices skip pydicom: their headers are walked for the few tags a volume needs and the pixel data
    is read from its offset into the slot (`_read_native_slice`); every other slice, and any file the fast path
    finds unusual, is parsed and decoded by pydicom (compressed ones by a pool of threads).

    Args:
        paths: the slice files (any order).
        strict: raise on uneven spacing, missing slices and gantry tilt instead of listing them in ``warnings``.
        workers: threads (default: up to 4).
        folder: named in series-level errors (default: the first file's folder).
        require_one_series: the paths are all files of a folder, not yet known to be one series: raise
            `NotOneSeries` (not a `ReadError`) as soon as a file is not a single-frame image of the first file's
            series, so the caller can fall back to `discover`. This lets ``read_volume(folder)`` read a plain
            series folder in one pass instead of parsing every header twice.

    Raises:
        GeometryError: one slice, duplicate positions, mixed sizes or orientations, missing geometry tags.
        ReadError: a file that cannot be read or decoded (the error names it).
    """
    paths = [Path(p) for p in paths]
    where = Path(folder) if folder is not None else (paths[0].parent if paths else Path("."))
    if len(paths) < 2:
        raise GeometryError(f"series has {len(paths)} slice; a volume needs at least 2", paths[0] if paths else where)
    try:
        first = read_dataset(paths[0], stop_before_pixels=True)
    except UnsupportedFormatError:
        if require_one_series:
            raise NotOneSeries() from None
        raise
    series_uid = first.get("SeriesInstanceUID")
    if require_one_series and not _is_series_slice(first, series_uid):
        raise NotOneSeries()
    _, rows, cols = check_dimensions(first, paths[0])
    if int(first.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedFormatError("colour slices cannot form a scalar volume", paths[0])
    if len(paths) * rows * cols > MAX_VOXELS:
        raise AbsurdSizeError(f"implausible volume: {len(paths)} slices of {rows}x{cols}", where)
    slope, intercept = rescale_params(first)
    dtype = output_dtype(first, slope, intercept)
    if workers is None:
        # Uncompressed slices take the header-walk fast path (~0.3 ms per 512x512 slice, a third of it Python):
        # on 2 cores 2 threads measured no faster than 1 and noisier, and a process pool lost to its own start-up
        # (a fork pool scanning 300 headers: 41 ms against 18 ms serial). Compressed slices spend most of their time
        # in C decoders, which can overlap when they release the GIL; on the loaded 2-core test machine threads
        # neither helped nor hurt there (JPEG-LS, RLE), so they stay on for compressed data.
        workers = 1 if transfer_syntax(first) in NATIVE_LITTLE_ENDIAN else default_workers()
    series_text = str(series_uid) if require_one_series and series_uid is not None else None

    def read_as(dtype: np.dtype, check_series: bool) -> Volume:
        """Read every slice into a volume of ``dtype``; `_NeedsFloat`/`_NeedsWider` when a slice does not fit it."""
        volume = np.empty((len(paths), rows, cols), dtype)
        headers: list[_SliceHeader | None] = [None] * len(paths)

        def load(index: int) -> None:
            path = paths[index]
            header = _read_native_slice(path, volume[index], series_text if check_series else None)
            if header is not None:
                headers[index] = header
                return
            try:
                ds = read_dataset(path)
            except UnsupportedFormatError:
                if check_series:
                    raise NotOneSeries() from None
                raise
            if check_series and not _is_series_slice(ds, series_uid):
                raise NotOneSeries()
            get = ds.get
            size = (get("Rows", 0), get("Columns", 0))
            if size != (rows, cols):
                raise GeometryError(f"mixed slice sizes in one series: {size[0]}x{size[1]} vs {rows}x{cols}", path)
            s, i = rescale_params(ds)
            _check_holds(dtype, *pixel_format(ds), s, i)
            decode_into(ds, path, volume[index], (s, i))
            headers[index] = _SliceHeader(
                _floats(get("ImagePositionPatient")),
                _floats(get("ImageOrientationPatient")),
                _floats(get("PixelSpacing")),
                str(get("SOPInstanceUID", "")),
                size,
                (s, i),
            )

        _run_parallel(load, len(paths), workers)
        return _finish_series(volume, headers, first, where, strict)

    try:
        return read_as(dtype, require_one_series)
    except (_NeedsFloat, _NeedsWider):
        # A slice whose rescale (or stored format) differs from the first's and does not fit its type (rare: PET,
        # some MR and CT). The volume is dropped before the reread so that two never coexist.
        if require_one_series:
            raise NotOneSeries() from None  # let discover() vet the folder first; then the reread below runs
    # Choose the type from every slice's rescale, as the first slice alone misled us; float32 if one is fractional.
    try:
        return read_as(_series_dtype(paths), False)
    except (_NeedsFloat, _NeedsWider):  # a file changed between the header scan and the read
        return read_as(np.dtype(np.float32), False)


class _NeedsFloat(Exception):
    pass


class _NeedsWider(Exception):
    pass


def _check_holds(dtype: np.dtype, bits_stored: int, signed: bool, slope: float, intercept: float) -> None:
    """Raise `_NeedsFloat`/`_NeedsWider` unless ``dtype`` holds every value of this slice's rescale exactly."""
    if _holds(dtype, bits_stored, signed, slope, intercept):
        return
    if not (float(slope).is_integer() and float(intercept).is_integer()):
        raise _NeedsFloat()
    raise _NeedsWider()


def _series_dtype(paths: list[Path]) -> np.dtype:
    """The output type holding the rescaled values of every slice (one header scan of each file)."""
    formats = set()
    for path in paths:
        ds = read_dataset(path, stop_before_pixels=True)
        formats.add((*pixel_format(ds), *rescale_params(ds)))
    return rescaled_dtype(formats)


def _is_series_slice(ds: Dataset, series_uid: Any) -> bool:
    """A single-frame image with plane geometry belonging to ``series_uid``."""
    return (
        series_uid is not None
        and ds.get("SeriesInstanceUID") == series_uid
        and "Rows" in ds
        and number_of_frames(ds) == 1
        and "ImagePositionPatient" in ds
        and "WaveformSequence" not in ds
    )


def _run_parallel(fn: Any, n: int, workers: int | None) -> None:
    workers = workers or default_workers()
    if workers <= 1:
        for i in range(n):
            fn(i)
        return
    with ThreadPoolExecutor(workers) as pool:
        # list() re-raises the first worker exception (a ReadError naming its file).
        list(pool.map(fn, range(n)))


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        values = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def _finish_series(
    volume: np.ndarray, headers: list[_SliceHeader | None], first: Dataset, folder: Path, strict: bool
) -> Volume:
    assert all(h is not None for h in headers)
    hdrs: list[_SliceHeader] = headers  # type: ignore[assignment]
    if any(h.position is None or h.orientation is None or len(h.position) != 3 for h in hdrs):
        raise GeometryError("slices without ImagePositionPatient/ImageOrientationPatient cannot form a volume", folder)
    orientations = np.array([h.orientation for h in hdrs])
    if np.max(np.abs(orientations - orientations[0])) > ORIENTATION_TOLERANCE * 10:
        raise GeometryError("mixed slice orientations in one series (localizers mixed with axials?)", folder)
    spacing = hdrs[0].spacing or _floats(first.get("ImagerPixelSpacing")) or (1.0, 1.0)
    geometry = stack_geometry(np.array([h.position for h in hdrs]), hdrs[0].orientation, spacing, folder, strict=strict)
    _permute_slices_in_place(volume, geometry.order)
    meta = _common_meta(first)
    meta["SOPInstanceUIDs"] = [hdrs[i].sop_uid for i in geometry.order]
    meta["n_files"] = len(hdrs)
    if len({h.rescale for h in hdrs}) > 1:
        meta["per_slice_rescale"] = True
    return Volume(volume, geometry.spacing, geometry.origin, geometry.direction, meta, geometry.warnings)


# --------------------------------------------------------------------------------------------------------------------
# Multi-frame objects
# --------------------------------------------------------------------------------------------------------------------
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
    offsets = np.asarray([float(v) for v in ds.GridFrameOffsetVector])
    if len(offsets) != number_of_frames(ds):
        raise GeometryError(f"{len(offsets)} grid frame offsets for {number_of_frames(ds)} frames", path)
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
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
        positions.append(_floats(pos.get("ImagePositionPatient")) if pos is not None else None)
        pvt = _frame_group(ds, i, "PixelValueTransformationSequence")
        if pvt is None:
            slopes.append((1.0, 0.0))
        else:
            slopes.append((float(pvt.get("RescaleSlope", 1)), float(pvt.get("RescaleIntercept", 0))))
    orient = _frame_group(ds, 0, "PlaneOrientationSequence")
    measures = _frame_group(ds, 0, "PixelMeasuresSequence")
    if orient is None or any(p is None for p in positions):
        raise GeometryError("multi-frame object lacks plane orientation or position for some frames", path)
    spacing = _floats(measures.get("PixelSpacing")) if measures is not None else None
    geometry = stack_geometry(
        np.array(positions), _floats(orient.ImageOrientationPatient), spacing or (1.0, 1.0), path, strict=strict
    )
    stored = decode_pixels(ds, path)
    # One type for all frames' rescales: frames may differ in slope or intercept (float32 if one is fractional).
    dtype = rescaled_dtype({(*pixel_format(ds), s, c) for s, c in slopes})
    volume = np.empty(stored.shape, dtype)
    for i, (s, c) in enumerate(slopes):
        apply_rescale(stored[i], s, c, volume[i])
    volume = volume[geometry.order]
    meta = _common_meta(ds)
    meta["SOPInstanceUIDs"] = [str(ds.SOPInstanceUID)] * n
    meta["frame_numbers"] = [int(i) + 1 for i in geometry.order]  # 1-based, as ReferencedFrameNumber counts
    meta["n_files"] = 1
    return Volume(volume, geometry.spacing, geometry.origin, geometry.direction, meta, geometry.warnings)


def _read_grid_stack(ds: Dataset, path: Path, strict: bool) -> Volume:
    """RT Dose-style multi-frame: one IPP/IOP plus GridFrameOffsetVector. Stored values are returned with the
    modality rescale only, as SimpleITK does; DoseGridScaling (Gy per unit) is reported in ``meta``."""
    geometry = stack_geometry(
        _grid_frame_positions(ds, path),
        _floats(ds.ImageOrientationPatient),
        _floats(ds.get("PixelSpacing")) or (1.0, 1.0),
        path,
        strict=strict,
    )
    stored = decode_pixels(ds, path)
    slope, intercept = rescale_params(ds)
    volume = np.empty(stored.shape, output_dtype(ds, slope, intercept))
    apply_rescale(stored, slope, intercept, volume)
    volume = volume[geometry.order]
    meta = _common_meta(ds)
    meta["SOPInstanceUIDs"] = [str(ds.SOPInstanceUID)] * len(geometry.order)
    meta["frame_numbers"] = [int(i) + 1 for i in geometry.order]
    meta["n_files"] = 1
    if "DoseGridScaling" in ds:
        meta["DoseGridScaling"] = float(ds.DoseGridScaling)
    return Volume(volume, geometry.spacing, geometry.origin, geometry.direction, meta, geometry.warnings)


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
    spacing = _floats(ds.get("PixelSpacing")) or _floats(ds.get("ImagerPixelSpacing"))
    meta = _common_meta(ds)
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
    meta = _common_meta(ds)
    meta["SOPInstanceUID"] = str(ds.get("SOPInstanceUID", ""))
    meta["frame_time_from_file"] = timed
    spacing = _floats(ds.get("PixelSpacing")) or _floats(ds.get("ImagerPixelSpacing"))
    if spacing:
        meta["pixel_spacing"] = tuple(spacing[:2])
    return Video(np.ascontiguousarray(arr), times.astype(np.float64), float(fps), meta)
