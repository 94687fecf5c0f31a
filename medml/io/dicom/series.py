"""Series of single-frame files into one `Volume`, equal to SimpleITK's ``ImageSeriesReader``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medml.errors import AbsurdSizeError, GeometryError, UnsupportedFormatError
from medml.io.dicom.geometry import ORIENTATION_TOLERANCE, permute_slices_in_place, stack_geometry
from medml.io.dicom.header import (
    MAX_VOXELS,
    NATIVE_LITTLE_ENDIAN,
    check_dimensions,
    common_meta,
    float_values,
    header_int,
    number_of_frames,
    read_dataset,
    transfer_syntax,
)
from medml.io.dicom.native import SliceHeader, read_native_slice
from medml.io.dicom.pixels import (
    NeedsFloat,
    NeedsWider,
    check_holds,
    decode_into,
    output_dtype,
    pixel_format,
    rescale_params,
    rescaled_dtype,
)
from medml.io.guard import check_memory
from medml.io.types import Volume


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
    is read from its offset into the slot (`read_native_slice`); every other slice, and any file the fast path
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
    if header_int(first, "SamplesPerPixel", 1, paths[0]) != 1:
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
        """Read every slice into a volume of ``dtype``; `NeedsFloat`/`NeedsWider` when a slice does not fit it."""
        check_memory(len(paths) * rows * cols * dtype.itemsize, f"{len(paths)} slices of {rows}x{cols} {dtype}", where)
        volume = np.empty((len(paths), rows, cols), dtype)
        headers: list[SliceHeader | None] = [None] * len(paths)

        def load(index: int) -> None:
            path = paths[index]
            header = read_native_slice(path, volume[index], series_text if check_series else None)
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
            check_holds(dtype, *pixel_format(ds), s, i)
            decode_into(ds, path, volume[index], (s, i))
            headers[index] = SliceHeader(
                float_values(get("ImagePositionPatient")),
                float_values(get("ImageOrientationPatient")),
                float_values(get("PixelSpacing")),
                str(get("SOPInstanceUID", "")),
                size,
                (s, i),
            )

        _run_parallel(load, len(paths), workers)
        return _finish_series(volume, headers, first, where, strict)

    try:
        return read_as(dtype, require_one_series)
    except (NeedsFloat, NeedsWider):
        # A slice whose rescale (or stored format) differs from the first's and does not fit its type (rare: PET,
        # some MR and CT). The volume is dropped before the reread so that two never coexist.
        if require_one_series:
            raise NotOneSeries() from None  # let discover() vet the folder first; then the reread below runs
    # Choose the type from every slice's rescale, as the first slice alone misled us; float32 if one is fractional.
    try:
        return read_as(_series_dtype(paths), False)
    except (NeedsFloat, NeedsWider):  # a file changed between the header scan and the read
        return read_as(np.dtype(np.float32), False)


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


def _finish_series(
    volume: np.ndarray, headers: list[SliceHeader | None], first: Dataset, folder: Path, strict: bool
) -> Volume:
    assert all(h is not None for h in headers)
    hdrs: list[SliceHeader] = headers  # type: ignore[assignment]
    if any(h.position is None or h.orientation is None or len(h.position) != 3 for h in hdrs):
        raise GeometryError("slices without ImagePositionPatient/ImageOrientationPatient cannot form a volume", folder)
    orientations = np.array([h.orientation for h in hdrs])
    if np.max(np.abs(orientations - orientations[0])) > ORIENTATION_TOLERANCE * 10:
        raise GeometryError("mixed slice orientations in one series (localizers mixed with axials?)", folder)
    spacing = hdrs[0].spacing or float_values(first.get("ImagerPixelSpacing")) or (1.0, 1.0)
    geometry = stack_geometry(np.array([h.position for h in hdrs]), hdrs[0].orientation, spacing, folder, strict=strict)
    permute_slices_in_place(volume, geometry.order)
    meta = common_meta(first)
    meta["SOPInstanceUIDs"] = [hdrs[i].sop_uid for i in geometry.order]
    meta["n_files"] = len(hdrs)
    if len({h.rescale for h in hdrs}) > 1:
        meta["per_slice_rescale"] = True
    return Volume(volume, geometry.spacing, geometry.origin, geometry.direction, meta, geometry.warnings)
