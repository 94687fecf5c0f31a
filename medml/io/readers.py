"""The public readers: one entry point per record type, accepting a `Case` or a path.

A path may name a file, a series folder, or a WFDB record (with or without ``.hea``). When a folder holds several
cases the reader refuses to guess and names them; pass the `Case` from `discover` instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medml.errors import GeometryError, MedmlError, ReadError, UnsupportedFormatError
from medml.io.dicom import (
    NotOneSeries,
    is_enhanced_volume,
    number_of_frames,
    read_dataset,
    read_dicom_image,
    read_dicom_series,
    read_dicom_video,
    read_multiframe_volume,
    sop_class_name,
)
from medml.io.discover import dicom_meta, discover, relative_case_id, sniff
from medml.io.ecg import read_dicom_ecg, read_wfdb
from medml.io.guard import reading
from medml.io.image import read_image_file, to_uint8_rgb
from medml.io.nifti import read_itk_image, read_nifti
from medml.io.types import Case, EcgRecord, Image2D, Video, Volume
from medml.io.video import read_frame_folder, read_video_file

T = TypeVar("T")

VOLUME_KINDS = ("dicom_series", "dicom_multiframe", "nifti", "mha", "nrrd")
IMAGE_KINDS = ("dicom_image", "image", "dicom_multiframe")
VIDEO_KINDS = ("dicom_multiframe", "video", "frames", "dicom_image")
ECG_KINDS = ("wfdb", "dicom_ecg")


def _guarded(reader: Callable[..., T]) -> Callable[..., T]:
    """Any exception from a third-party library while finding or reading the case becomes a one-line `ReadError`
    naming the input (medml's own errors pass through); the exception's type name stays in the reason."""

    @functools.wraps(reader)
    def guarded(case_or_path: Case | str | Path, *args: Any, **kwargs: Any) -> T:
        where = case_or_path.path if isinstance(case_or_path, Case) else case_or_path
        with reading(where, "input"):
            return reader(case_or_path, *args, **kwargs)

    return guarded


def case_for_path(path: str | Path, wanted: tuple[str, ...] = ()) -> Case:
    """The one case a path names; `ReadError` subclasses for unreadable files, or when a folder holds several."""

    path = Path(path)
    if not path.exists() and path.with_suffix(".hea").is_file():
        path = path.with_suffix(".hea")  # a WFDB record named without extension, as wfdb.rdrecord takes it
    if not path.exists():
        raise ReadError("no such file or folder", path)
    if path.is_file():
        kind = sniff(path)
        if kind is None:
            raise UnsupportedFormatError(
                "unrecognised file format (not DICOM, NIfTI, MHA, NRRD, WFDB, image, video)", path
            )
        if kind == "dicom":
            header = read_dataset(path, stop_before_pixels=True)
            if "WaveformSequence" in header:
                kind = "dicom_ecg"
            elif "Rows" not in header:
                raise UnsupportedFormatError(f"no pixel data or waveform ({sop_class_name(header)})", path)
            else:
                kind = "dicom_multiframe" if number_of_frames(header) > 1 else "dicom_image"
            return Case(relative_case_id(path, path.parent), kind, [path], dicom_meta(header, path))
        cases, failures = discover(path)
        if not cases:
            raise UnsupportedFormatError(failures[0][1] if failures else "no readable case", path)
        return cases[0]
    cases, failures = discover(path)
    usable = [c for c in cases if not wanted or c.kind in wanted]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        found = ", ".join(sorted({c.kind for c in cases})) or "nothing readable"
        detail = f"; first failure: {failures[0][0]}: {failures[0][1]}" if failures else ""
        raise UnsupportedFormatError(f"no {'/'.join(wanted) or 'case'} here (found {found}){detail}", path)
    names = ", ".join(c.case_id for c in usable[:5])
    raise UnsupportedFormatError(
        f"folder holds {len(usable)} cases ({names}{', ...' if len(usable) > 5 else ''}); "
        "pass one of them (see medml inspect)",
        path,
    )


def _case(case_or_path: Case | str | Path, wanted: tuple[str, ...]) -> Case:
    return case_or_path if isinstance(case_or_path, Case) else case_for_path(case_or_path, wanted)


@_guarded
def read_volume(case_or_path: Case | str | Path, *, strict: bool = False, workers: int | None = None) -> Volume:
    """A 3D volume from a DICOM series, an enhanced multi-frame DICOM, NIfTI, MHA/MHD or NRRD.

    Args:
        case_or_path: a `Case` or a path (series folder, file).
        strict: raise `GeometryError` for uneven spacing, missing slices or tilt instead of listing them in
            ``Volume.warnings``.
        workers: threads for DICOM series decoding (default: 1 for uncompressed slices, up to 4 for compressed).
    """
    if not isinstance(case_or_path, Case) and Path(case_or_path).is_dir():
        volume = _read_plain_series_folder(Path(case_or_path), strict, workers)
        if volume is not None:
            return volume
    case = _case(case_or_path, VOLUME_KINDS)
    if case.kind == "dicom_series":
        return read_dicom_series(case.paths, strict=strict, workers=workers, folder=case.path)
    if case.kind == "dicom_multiframe":
        return read_multiframe_volume(case.paths[0], strict=strict)
    if case.kind == "dicom_image":
        raise GeometryError("series has 1 slice; a volume needs at least 2", case.paths[0])
    if case.kind == "nifti":
        return read_nifti(case.paths[0])
    if case.kind in ("mha", "nrrd"):
        return read_itk_image(case.paths[0])
    raise UnsupportedFormatError(f"a {case.kind} case is not a volume", case.path)


def _read_plain_series_folder(folder: Path, strict: bool, workers: int | None) -> Volume | None:
    """Read a folder that holds exactly one DICOM series in a single pass, or return None to use `discover`."""

    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if len(files) < 2:
        return None
    try:
        return read_dicom_series(files, strict=strict, workers=workers, folder=folder, require_one_series=True)
    except NotOneSeries:
        return None


@_guarded
def read_image(case_or_path: Case | str | Path, *, voi: bool = False, rgb: bool = False, frame: int = 0) -> Image2D:
    """A 2D image from a DICOM file (DX/CR/photograph/one slice; ``frame`` of a multi-frame) or PNG/JPEG/BMP/TIFF.

    Args:
        case_or_path: a `Case` or a file path.
        voi: apply the DICOM VOI LUT/window (MONOCHROME1 is always inverted).
        rgb: return HxWx3 RGB whatever is stored (image files only; DICOM colour is always RGB).
        frame: frame index of a multi-frame DICOM.
    """
    case = _case(case_or_path, IMAGE_KINDS)
    if case.kind in ("dicom_image", "dicom_multiframe"):
        image = read_dicom_image(case.paths[0], voi=voi, frame=frame)
        if rgb and image.array.ndim == 2:
            image.array = to_uint8_rgb(image.array)
        return image
    if case.kind == "image":
        return read_image_file(case.paths[0], rgb=rgb)
    raise UnsupportedFormatError(f"a {case.kind} case is not a 2D image", case.path)


@_guarded
def read_video(case_or_path: Case | str | Path, *, fps: float | None = None, voi: bool = False) -> Video:
    """Frames and frame times from a DICOM cine (XA/XRF/US), a video file or a folder of numbered frames.

    Args:
        case_or_path: a `Case` or a path.
        fps: frame rate for frame folders (which store none); ignored where the source has timing.
        voi: apply the DICOM VOI LUT/window.
    """
    case = _case(case_or_path, VIDEO_KINDS)
    if case.kind in ("dicom_multiframe", "dicom_image"):
        return read_dicom_video(case.paths[0], voi=voi)
    if case.kind == "video":
        return read_video_file(case.paths[0])
    if case.kind == "frames":
        return read_frame_folder(case.paths, fps)
    raise UnsupportedFormatError(f"a {case.kind} case is not a video", case.path)


@_guarded
def read_ecg(case_or_path: Case | str | Path, *, derive_limb_leads: bool = True, check: bool = True) -> EcgRecord:
    """A 12-lead ECG from a WFDB record or a DICOM waveform, as (12, n) float32 mV in the standard lead order.

    Args:
        case_or_path: a `Case`, a ``.hea`` path, a record path without extension, or a DICOM file.
        derive_limb_leads: compute III, aVR, aVL, aVF from I and II when the source stores only 8 leads.
        check: raise `SignalError` for NaN or flat leads.
    """
    case = _case(case_or_path, ECG_KINDS)
    if case.kind == "wfdb":
        return read_wfdb(case.paths[0], derive_limb_leads=derive_limb_leads, check=check)
    if case.kind == "dicom_ecg":
        return read_dicom_ecg(case.paths[0], derive_limb_leads=derive_limb_leads, check=check)
    raise UnsupportedFormatError(f"a {case.kind} case is not an ECG", case.path)


@_guarded
def read_case(case: Case) -> Volume | Image2D | Video | EcgRecord:
    """Read a case with the reader its kind implies (volumes for series, videos for multi-frame, ...)."""
    if case.kind in ECG_KINDS:
        return read_ecg(case)
    if case.kind in ("video", "frames"):
        return read_video(case)
    if case.kind == "dicom_multiframe":
        header = read_dataset(case.paths[0], stop_before_pixels=True)
        return read_volume(case) if is_enhanced_volume(header) else read_video(case)
    if case.kind in ("dicom_image", "image"):
        return read_image(case)
    if case.kind in VOLUME_KINDS:
        return read_volume(case)
    raise MedmlError(f"unknown case kind {case.kind}", case.path)
