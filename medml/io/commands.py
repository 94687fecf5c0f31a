"""What ``medml inspect`` and ``medml convert`` do, as functions the CLI (and notebooks) call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medml.errors import ConfigError, GeometryError, MedmlError, UnsupportedFormatError
from medml.io.dicom import read_dataset
from medml.io.discover import FATAL, discover, error_reason, printable, resolved_path
from medml.io.image import default_palette
from medml.io.nifti import write_nifti
from medml.io.readers import case_for_path, read_case, read_image, read_volume
from medml.io.reports import write_report_json
from medml.io.seg import CATEGORY_TISSUE, SegmentSpec, source_datasets_in_volume_order, write_dicom_seg
from medml.io.types import Case, EcgRecord, Image2D, Video, Volume

INSPECT_SCHEMA_VERSION = 1


def _round(values: Any, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values, float).reshape(-1)]


def axis_codes(volume: Volume) -> str:
    """Anatomical direction of increasing x, y, z index, in RAS letters (e.g. ``LPS`` for a standard axial CT)."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(volume.affine))


def describe(case: Case, record: Volume | Image2D | Video | EcgRecord) -> dict[str, Any]:
    """The JSON-ready summary of one case (the per-case entry of `inspect`)."""
    entry: dict[str, Any] = {"case_id": case.case_id, "kind": case.kind, "n_files": len(case.paths)}
    entry.update({k: case.meta[k] for k in ("Modality", "StudyInstanceUID", "SeriesInstanceUID") if k in case.meta})
    if isinstance(record, Volume):
        entry.update(
            {
                "type": "volume",
                "shape": list(record.array.shape),
                "dtype": str(record.array.dtype),
                "spacing": _round(record.spacing),
                "origin": _round(record.origin, 4),
                "direction": _round(record.direction),
                "orientation": axis_codes(record),
                "warnings": list(record.warnings),
            }
        )
    elif isinstance(record, Video):
        steps = np.diff(record.frame_times_ms)
        entry.update(
            {
                "type": "video",
                "shape": list(record.frames.shape),
                "dtype": str(record.frames.dtype),
                "n_frames": int(record.frames.shape[0]),
                "frame_time_ms": round(float(np.mean(steps)), 4) if len(steps) else None,
                "fps": round(float(record.fps), 4),
                "pixel_spacing": list(record.meta["pixel_spacing"]) if "pixel_spacing" in record.meta else None,
            }
        )
    elif isinstance(record, EcgRecord):
        entry.update(
            {
                "type": "ecg",
                "shape": list(record.signal.shape),
                "fs": float(record.fs),
                "leads": list(record.lead_names),
                "source_leads": [str(x) for x in record.meta.get("source_leads", [])],
                "derived_leads": list(record.meta.get("derived_leads", [])),
                "duration_s": round(record.duration_s, 3),
            }
        )
    elif isinstance(record, Image2D):
        entry.update(
            {
                "type": "image",
                "shape": list(record.array.shape),
                "dtype": str(record.array.dtype),
                "spacing": _round(record.spacing) if record.spacing else None,
            }
        )
    return entry


def inspect(path: str | Path) -> dict[str, Any]:
    """Everything medml finds in a file or folder: each case with its geometry or timing, and each error.

    Returns:
        ``{"schema": 1, "path": str, "cases": [...], "errors": [{"path", "reason"}]}``; each case has
        ``case_id, kind, n_files, type`` (volume/video/ecg/image), ``shape``, and per type ``spacing, origin,
        direction, orientation, warnings`` (volume), ``n_frames, frame_time_ms, fps`` (video), ``fs, leads,
        duration_s`` (ecg) or ``spacing`` (image), plus the study/series UIDs of DICOM cases. No patient names.
    """

    path = Path(path)
    cases, failures = discover(path)
    report: dict[str, Any] = {"schema": INSPECT_SCHEMA_VERSION, "path": printable(path), "cases": [], "errors": []}
    report["errors"] = [{"path": printable(p), "reason": r} for p, r in failures]
    for case in cases:
        try:
            report["cases"].append(describe(case, read_case(case)))
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - one unreadable case is one error line, never the end of inspect
            where = exc.path if isinstance(exc, MedmlError) and exc.path else str(case.path)
            report["errors"].append({"path": printable(where), "reason": error_reason(exc), "case_id": case.case_id})
    return report


def format_inspect(report: Mapping[str, Any]) -> str:
    """A human-readable table of an `inspect` report (what ``medml inspect`` prints without ``--json``)."""
    lines = []
    for case in report["cases"]:
        shape = "x".join(str(s) for s in case["shape"])
        if case["type"] == "volume":
            spacing = "x".join(f"{s:.4g}" for s in case["spacing"])
            detail = f"{shape} {case['dtype']} spacing {spacing} mm {case['orientation']}"
            if case["warnings"]:
                detail += "  WARNING: " + "; ".join(case["warnings"])
        elif case["type"] == "video":
            detail = f"{shape} {case['n_frames']} frames, {case['frame_time_ms']} ms/frame ({case['fps']:.3g} fps)"
        elif case["type"] == "ecg":
            detail = f"{len(case['leads'])} leads, {case['fs']:g} Hz, {case['duration_s']} s"
        else:
            detail = f"{shape} {case['dtype']}"
        lines.append(f"{case['case_id']}  [{case['kind']}]  {detail}")
    for error in report["errors"]:
        lines.append(f"ERROR {error['path']}: {error['reason']}")
    if not lines:
        lines.append("nothing found")
    return "\n".join(lines)


def generic_segment_table(labels: Sequence[int]) -> list[Any]:
    """A neutral label table ("label N", SNOMED Tissue) for masks whose meaning the caller did not code."""

    palette = default_palette(256)
    return [
        SegmentSpec(
            int(n),
            f"label {int(n)}",
            CATEGORY_TISSUE,
            ("85756007", "SCT", "Tissue"),
            tuple(int(c) for c in palette[int(n) % 256]),
        )
        for n in labels
        if int(n) != 0
    ]


def convert(
    input: str | Path,
    output: str | Path,
    mask: str | Path | None = None,
    segment_table: Sequence[Any] | None = None,
    anonymize_paths: bool = True,
) -> Path:
    """Convert a DICOM series, enhanced multi-frame or cine (or NIfTI/MHA/NRRD) to NIfTI, or a mask to DICOM SEG.

    * ``output`` ending in ``.nii``/``.nii.gz``: the image, with the source geometry (a cine is written as
      (x, y, frame)), plus a JSON sidecar (``output`` with ``.json``) holding UIDs, spacing, frame times and
      geometry warnings. Its ``source`` is the case id (``anonymize_paths``, the default: folder names often name
      the patient) or the input's name; no absolute path is written.
    * ``output`` ending in ``.dcm`` with ``mask``: a DICOM SEG of the mask (NIfTI on the same grid as the DICOM
      source, or a PNG for a one-frame source) referencing the source instances.

    Returns:
        The written path.
    """

    output = Path(output)
    name = output.name.lower()
    case = case_for_path(input, ("dicom_series", "dicom_multiframe", "dicom_image", "nifti", "mha", "nrrd"))
    _check_output(output, Path(input), [*case.paths, *([Path(mask)] if mask is not None else [])])
    if mask is not None:
        if not name.endswith(".dcm"):
            raise UnsupportedFormatError("with --mask the output is a DICOM SEG: give a .dcm output name", output)
        return _mask_to_seg(case, Path(mask), output, segment_table)
    if not name.endswith((".nii", ".nii.gz")):
        raise UnsupportedFormatError("convert writes NIfTI (.nii or .nii.gz), or DICOM SEG (.dcm) with a mask", output)

    record = read_case(case)
    sidecar: dict[str, Any] = {"source_case": case.case_id, "kind": case.kind}
    if isinstance(record, Volume):
        write_nifti(record.array, record, output)
        sidecar.update({k: v for k, v in record.meta.items() if k != "SOPInstanceUIDs"})
        sidecar.update(
            {"spacing": list(record.spacing), "warnings": record.warnings, "orientation": axis_codes(record)}
        )
    elif isinstance(record, Video | Image2D):
        frames = record.frames if isinstance(record, Video) else record.array[None]
        if frames.ndim != 3:
            raise UnsupportedFormatError("colour frames cannot be written as a scalar NIfTI", case.path)
        spacing = record.meta.get("pixel_spacing") if isinstance(record, Video) else record.spacing
        row, col = (spacing or (1.0, 1.0))[:2]
        affine = np.diag([-float(col), -float(row), 1.0, 1.0])  # LPS identity directions, in RAS
        write_nifti(frames, affine, output)
        sidecar.update({k: v for k, v in record.meta.items() if isinstance(v, str | int | float | bool)})
        if isinstance(record, Video):
            sidecar.update(
                {"frame_times_ms": _round(record.frame_times_ms, 3), "fps": record.fps, "third_axis": "frame"}
            )
    else:
        raise UnsupportedFormatError(f"cannot convert a {case.kind} case to NIfTI", case.path)
    sidecar["source"] = case.case_id if anonymize_paths else printable(Path(input).name)
    sidecar = _without_folder(sidecar, Path(input))
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    write_report_json(sidecar, output.with_name(output.name[: -len(suffix)] + ".json"))
    return output


def _check_output(output: Path, input: Path, sources: list[Path]) -> None:
    """The written files (output and its sidecar) never replace a source file nor land inside an input folder,
    and their folder must be one: a user error, not a traceback."""
    real = resolved_path(output)
    sidecar = real.with_name(real.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".dcm") + ".json")
    inputs = {resolved_path(p) for p in (input, *sources)}
    folder = resolved_path(input)
    if {real, sidecar} & inputs or (input.is_dir() and folder in real.parents):
        raise ConfigError("the output would overwrite or land inside the input; choose another output", output)
    if output.is_dir():
        raise ConfigError("the output names a folder; give a file name ending in .nii.gz, .nii or .dcm", output)
    parent = next((p for p in output.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"cannot write the output: {parent.name} is a file, not a folder", output)


def _without_folder(value: Any, source: Path) -> Any:
    """``value`` with the folders above ``source`` cut from every string (readers record source paths)."""

    folders = {str(f) for f in (source.parent, resolved_path(source).parent, source.absolute().parent) if str(f) != "."}
    if isinstance(value, str):
        for folder in sorted(folders, key=len, reverse=True):
            value = value.replace(folder.rstrip("/") + "/", "")
        return value
    if isinstance(value, Mapping):
        return {k: _without_folder(v, source) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_folder(v, source) for v in value]
    return value


def _mask_to_seg(case: Case, mask_path: Path, output: Path, segment_table: Sequence[Any] | None) -> Path:

    if case.kind == "dicom_series":
        volume = read_volume(case)
        mask_volume = read_volume(mask_path)
        if mask_volume.array.shape != volume.array.shape:
            raise GeometryError(
                f"mask shape {mask_volume.array.shape} differs from the image's {volume.array.shape}", mask_path
            )
        if not np.allclose(mask_volume.affine, volume.affine, atol=1e-3):
            raise GeometryError("mask affine differs from the DICOM series geometry (resample it first)", mask_path)
        sources = source_datasets_in_volume_order(case.paths)
        labels = mask_volume.array
    elif case.kind in ("dicom_multiframe", "dicom_image"):
        sources = [read_dataset(case.paths[0], stop_before_pixels=True)]
        if mask_path.name.lower().endswith((".nii", ".nii.gz", ".mha", ".nrrd")):
            labels = read_volume(mask_path).array  # (frames, rows, cols)
        else:
            labels = read_image(mask_path).array[None]
    else:
        raise UnsupportedFormatError(f"DICOM SEG needs a DICOM source, not {case.kind}", case.path)
    labels = np.rint(labels).astype(np.int32) if labels.dtype.kind == "f" else labels.astype(np.int32)
    table = segment_table or generic_segment_table(np.unique(labels))
    return write_dicom_seg(sources if len(sources) > 1 else sources[0], labels, table, output)
