"""Pixel decoding (native fast path or pydicom's plugins), unused-bit masking and the modality rescale.

Decoding goes through pydicom's pixel-data plugins (pylibjpeg with libjpeg/openjpeg/rle, pyjpegls, or gdcm), so
every compressed transfer syntax those packages handle is read; uncompressed little-endian frames take a direct
`numpy.frombuffer` path because it is several times faster than pydicom's generic decoder.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medml.errors import CorruptFileError, GeometryError, MissingDecoderError, UnsupportedFormatError
from medml.io.dicom.header import (
    DECODER_PACKAGES,
    NATIVE_LITTLE_ENDIAN,
    OTHER_NATIVE,
    check_decoded_size,
    has_pixel_data,
    header_float,
    header_int,
    number_of_frames,
    sop_class_name,
    tag_value,
    transfer_syntax,
)


def _fix_unused_bits(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Mask the high bits above BitsStored (overlays live there in old files) and sign-extend signed data."""
    bits_alloc = header_int(ds, "BitsAllocated", 16)
    bits_stored = header_int(ds, "BitsStored", bits_alloc)
    if arr.dtype.kind not in "iu" or bits_stored >= bits_alloc or bits_stored <= 0:
        return arr
    shift = arr.dtype.itemsize * 8 - bits_stored
    if header_int(ds, "PixelRepresentation", 0) == 1:
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
        bits_stored = header_int(ds, "BitsStored", bits_alloc, path)
        if bits_stored < bits_alloc and raw.dtype.kind == "u":
            np.bitwise_and(raw, raw.dtype.type((1 << bits_stored) - 1), out=out, casting="unsafe")
        elif bits_stored < bits_alloc:
            np.copyto(out, _fix_unused_bits(raw, ds), casting="unsafe")
        else:
            np.copyto(out, raw, casting="unsafe")
    slope, intercept = rescale if rescale is not None else rescale_params(ds)
    rescale_in_place(out, slope, intercept)
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
        raise UnsupportedFormatError(f"no pixel data ({sop_class_name(ds)})", path)
    check_decoded_size(ds, path)
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


def rescale_params(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept) from the dataset, its shared functional groups, or (1, 0)."""
    slope, intercept = tag_value(ds, "RescaleSlope"), tag_value(ds, "RescaleIntercept")
    if slope is None and intercept is None and "SharedFunctionalGroupsSequence" in ds:
        group = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in group:
            pvt = group.PixelValueTransformationSequence[0]
            slope, intercept = tag_value(pvt, "RescaleSlope"), tag_value(pvt, "RescaleIntercept")
    slope_value = header_float(slope, "RescaleSlope", 1.0)
    if slope_value == 0:
        raise CorruptFileError("RescaleSlope is 0 (every pixel would get the same value)")
    return slope_value, header_float(intercept, "RescaleIntercept", 0.0)


def pixel_format(ds: Dataset) -> tuple[int, bool]:
    """(BitsStored, signed) of a dataset's stored grey values."""
    bits = header_int(ds, "BitsStored", header_int(ds, "BitsAllocated", 16)) or 16
    if not 0 < bits <= 32:
        raise CorruptFileError(f"BitsStored {bits} is outside 1..32")
    return bits, header_int(ds, "PixelRepresentation", 0) == 1


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


def rescale_in_place(out: np.ndarray, slope: float, intercept: float) -> None:
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
    rescale_in_place(out, slope, intercept)


class NeedsFloat(Exception):
    pass


class NeedsWider(Exception):
    pass


def check_holds(dtype: np.dtype, bits_stored: int, signed: bool, slope: float, intercept: float) -> None:
    """Raise `NeedsFloat`/`NeedsWider` unless ``dtype`` holds every value of this slice's rescale exactly."""
    if _holds(dtype, bits_stored, signed, slope, intercept):
        return
    if not (float(slope).is_integer() and float(intercept).is_integer()):
        raise NeedsFloat()
    raise NeedsWider()
