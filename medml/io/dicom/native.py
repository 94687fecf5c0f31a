"""The header walk for plain uncompressed little-endian slices: the hot path of CT series reading."""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medml.io.dicom.header import NATIVE_LITTLE_ENDIAN, VRS
from medml.io.dicom.pixels import check_holds, rescale_in_place


@dataclass
class SliceHeader:
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
_SHORT_VRS = frozenset(VRS) - _LONG_VRS
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
    """A DS (or IS) value as floats, as `float_values` gives for pydicom's value; None if absent or empty."""
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


def read_native_slice(path: Path, out: np.ndarray, series_uid: str | None) -> SliceHeader | None:
    """Read one uncompressed little-endian slice into ``out`` (rescaled, in ``out``'s type) without pydicom.

    Returns the slice's header, or None when the file needs pydicom (anything unusual, including every error, which
    pydicom then reports). ``series_uid``: the slice must belong to this series (None: not checked).

    Raises:
        NeedsFloat: ``out`` is an integer type and the slice has a fractional slope or intercept.
        NeedsWider: ``out``'s integer type cannot hold every value of the slice's rescale (its slope, intercept
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
            check_holds(out.dtype, bits_stored, signed, slope, intercept)
            stored_dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
            if pixel_length < rows * cols * stored_dtype.itemsize:
                raise _NotFast()  # truncated: pydicom names the problem
            # Read straight into the volume when the stored and output integers have the same width: reinterpreting
            # the bits and rescaling in place wraps exactly as the unsafe cast of the pydicom path does.
            in_place = out.dtype.kind in "iu" and out.dtype.itemsize == stored_dtype.itemsize and _LITTLE_ENDIAN_HOST
            stored = out.view(stored_dtype) if in_place else np.empty(out.shape, stored_dtype)
            header = SliceHeader(
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
    rescale_in_place(out, slope, intercept)
    return header
