"""Opening DICOM files and reading the header facts every reader needs (frames, size, UIDs, SOP class)."""

from __future__ import annotations

import math
import struct
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medml.errors import AbsurdSizeError, CorruptFileError, ReadError, UnsupportedFormatError
from medml.io.guard import check_memory

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


VRS = {
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


def looks_like_raw_dataset(head: bytes) -> bool:
    """True for a DICOM dataset written without preamble or meta header: it starts with a group 0008 element
    whose VR (explicit) or length (implicit) is plausible, in either byte order."""
    if len(head) < 12:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(f"{order}HH", head[:4])
        if group != 0x0008 or element == 0 or element > 0x1200:
            continue
        if head[4:6] in VRS:
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
            force = not has_preamble and looks_like_raw_dataset(head)
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
        message = " ".join(str(exc).split())[:200]
        raise CorruptFileError(f"truncated or malformed DICOM ({type(exc).__name__}: {message})", path) from None
    except RecursionError:
        raise CorruptFileError("malformed DICOM: sequences nested too deeply (RecursionError)", path) from None
    except Exception as exc:  # pydicom's own exceptions (BytesLengthException, ...) on mangled elements
        message = " ".join(str(exc).split())[:200]
        raise CorruptFileError(f"malformed DICOM ({type(exc).__name__}: {message})", path) from None
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


def _single(value: Any, key: str, path: str | Path | None) -> Any:
    """The one value of a tag that must hold one (pydicom gives a MultiValue when a file stores several)."""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        if len(value) != 1:
            raise CorruptFileError(f"{key} holds {len(value)} values; it must hold one", path)
        return value[0]
    return value


def header_int(ds: Dataset, key: str, default: int, path: str | Path | None = None) -> int:
    """An integer tag that must hold one value (Rows, Columns, BitsAllocated, ...); `CorruptFileError` otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = ds.get(key, default)
    if value is None or value == "":
        return default
    value = _single(value, key, path)
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise CorruptFileError(f"{key} {str(value)[:40]!r} is not an integer", path) from None


def check_dimensions(ds: Dataset, path: str | Path) -> tuple[int, int, int]:
    """(frames, rows, columns), or `AbsurdSizeError` for dimensions no device produces."""
    rows, cols, frames = header_int(ds, "Rows", 0, path), header_int(ds, "Columns", 0, path), number_of_frames(ds)
    if not (0 < rows <= MAX_ROWS_COLUMNS and 0 < cols <= MAX_ROWS_COLUMNS and 0 < frames <= MAX_FRAMES):
        raise AbsurdSizeError(f"implausible size: {frames} frames of {rows}x{cols}", path)
    return frames, rows, cols


def check_decoded_size(ds: Dataset, path: str | Path) -> int:
    """Refuse (`TooLargeError`) pixel data whose decoded array would exceed the memory budget; return its bytes.

    Estimated from the header alone (frames x rows x columns x samples x bytes per sample), so a compressed file
    whose header asks for terabytes is refused before any decoder allocates. Palette colour counts as 16-bit RGB.
    """
    frames, rows, cols = check_dimensions(ds, path)
    samples = max(1, header_int(ds, "SamplesPerPixel", 1, path))
    bits = max(1, header_int(ds, "BitsAllocated", 16, path))
    item = max(1, (bits + 7) // 8)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        samples, item = 3, max(item, 2)
    nbytes = frames * rows * cols * samples * item
    check_memory(nbytes, f"{frames} frame(s) of {rows}x{cols}x{samples} at {8 * item} bits", path)
    return nbytes


def sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return UID(str(uid)).name if uid else "unknown SOP class"


UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
META_KEYS = ("Modality", "SeriesNumber", "SeriesDescription", "Manufacturer", "SOPClassUID", "BodyPartExamined")


def common_meta(ds: Dataset) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in UID_KEYS + META_KEYS:
        value = ds.get(key)
        if value not in (None, ""):
            meta[key] = str(value) if not isinstance(value, int | float) else value
    return meta


def tag_value(ds: Dataset, key: str, default: Any = None) -> Any:
    """``ds.get(key, default)``, with pydicom's failure to convert a malformed DS/IS value (``'abc'``) turned into a
    `CorruptFileError` naming the tag."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.get(key, default)
    except (ValueError, TypeError, OverflowError):
        raise CorruptFileError(f"{key} does not hold a valid number") from None


def header_float(value: Any, key: str, default: float, path: str | Path | None = None) -> float:
    """A one-valued decimal tag (RescaleSlope, FrameTime, ...) as a finite float; `CorruptFileError` otherwise."""
    if value is None or value == "":
        return default
    value = _single(value, key, path)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise CorruptFileError(f"{key} {str(value)[:40]!r} is not a number", path) from None
    if not math.isfinite(number):
        raise CorruptFileError(f"{key} is {number}", path)
    return number


def float_values(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        values = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
