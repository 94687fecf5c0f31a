"""Find the cases in a folder: classify files by their content and group DICOM slices into series.

File names and extensions are not trusted: a DICOM file may have no extension (PACS exports) and a ``.dcm`` may
be anything. Each file's first bytes decide its format; DICOM headers are parsed (without pixel data) to group
single-frame slices by SeriesInstanceUID and to tell volumes, cines, 2D images and waveform ECGs apart.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

from medml.errors import MedmlError
from medml.io.types import Case

# Files that commonly sit beside clinical data (dataset tables, notes) and are not inputs; they are skipped
# without a failure entry. Everything else that is not recognised is reported.
SIDECAR_SUFFIXES = {
    ".csv",
    ".tsv",
    ".json",
    ".txt",
    ".md",
    ".xml",
    ".yaml",
    ".yml",
    ".log",
    ".html",
    ".pdf",
    ".py",
    ".ipynb",
    ".zip",
    ".tar",
    ".gz",
    ".npz",
    ".npy",
    ".pkl",
    ".xlsx",
    ".xls",
    ".icc",
    ".dump",
}
IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
DICOM_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PatientName",
    "PatientID",
    "WaveformSequence",
    "DirectoryRecordSequence",
]
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Objects with pixel data that are results, not acquisitions (segmentations, RT dose grids are read as volumes).
NON_IMAGE_PIXEL_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage (a derived object, not an image)"}


def sniff(path: Path, head: bytes | None = None) -> str | None:
    """The format of one file from its first bytes: dicom, nifti, mha, nrrd, wfdb, image, video, or None."""
    if head is None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(1024)
        except OSError:
            return None
    if head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 348 and _is_nifti_header(head):
        return "nifti"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(544)
        except (OSError, EOFError):
            return None
        return "nifti" if _is_nifti_header(inner) else None
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if re.match(rb"\s*(ObjectType|NDims|ObjectSubType)\s*=", head):
        return "mha"
    for magic, _ in IMAGE_MAGIC:
        if head.startswith(magic):
            return "image"
    if head[4:8] == b"ftyp" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[:4] == b"\x1a\x45\xdf\xa3":
        return "video"
    if head[:4] == b"GIF8":
        return "video"
    if path.suffix.lower() == ".hea" and _wfdb_header_ok(path, head):
        return "wfdb"
    # A DICOM dataset written without preamble starts with a group 0x0008 tag (either byte order).
    from medml.io.dicom import _looks_like_raw_dataset

    if _looks_like_raw_dataset(head):
        return "dicom"
    return None


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return struct.unpack("<i", head[:4])[0] == 348 or struct.unpack(">i", head[:4])[0] == 348
    return len(head) >= 12 and head[4:7] == b"n+2"


def _wfdb_header_ok(path: Path, head: bytes) -> bool:
    """A WFDB header's record line names the record (the file stem) and a signal count."""
    for line in head.decode("latin-1", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        return len(fields) >= 2 and fields[0].split("/")[0] == path.stem and fields[1].isdigit()
    return False


def _wfdb_files(hea: Path) -> list[Path]:
    """The header plus the signal files it names (that exist)."""
    files = [hea]
    lines = [ln for ln in hea.read_text("latin-1").splitlines() if ln.strip() and not ln.startswith("#")]
    for line in lines[1:]:
        name = line.split()[0]
        candidate = hea.parent / name
        if name != "~" and candidate.is_file() and candidate not in files:
            files.append(candidate)
    return files


def _safe_name(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return text or "case"


def _strip_identifiers(case_id: str, identifiers: set[str]) -> str:
    """Replace patient names and IDs that appear in a path-derived case id."""
    for ident in sorted(identifiers, key=len, reverse=True):
        if len(ident) >= 3:
            case_id = re.sub(re.escape(ident), "anon", case_id, flags=re.IGNORECASE)
    return case_id


def _patient_identifiers(header: Any) -> set[str]:
    idents: set[str] = set()
    name = str(header.get("PatientName", "") or "")
    for part in re.split(r"[\^ =,]+", name):
        if len(part) >= 3:
            idents.add(_safe_name(part))
    pid = str(header.get("PatientID", "") or "").strip()
    if pid:
        idents.add(_safe_name(pid))
    return idents


def _relative_id(path: Path, root: Path) -> str:
    """Output name from the path relative to the discovery root, without format extensions."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    name = rel.as_posix()
    if name in ("", "."):
        name = root.name
    for suffix in (
        ".nii.gz",
        ".nii",
        ".dcm",
        ".dicom",
        ".mha",
        ".mhd",
        ".nrrd",
        ".nhdr",
        ".hea",
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".tif",
        ".tiff",
        ".mp4",
        ".avi",
        ".mov",
        ".gif",
        ".mkv",
        ".webm",
    ):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _safe_name(name.replace("/", "__"))


def _header(path: Path) -> Any:
    from medml.io.dicom import read_dataset

    return read_dataset(path, stop_before_pixels=True, specific_tags=DICOM_HEADER_TAGS)


def discover(root: str | Path, *, frame_folders: bool = True) -> tuple[list[Case], list[tuple[str, str]]]:
    """Walk ``root`` (a folder, recursively, or a single file) and return its cases and the files it could not use.

    Args:
        root: folder or file.
        frame_folders: treat a folder of two or more images named only by frame number (``00000.jpg``, ...) as
            one "frames" video case, as MOSXAV stores its sequences.

    Returns:
        ``(cases, failures)``: cases sorted by case_id; failures as ``(path, reason)`` for files that look like
        inputs but cannot be read (not DICOM despite ``.dcm``, truncated headers, DICOM objects without pixels).
    """
    root = Path(root)
    if not root.exists():
        raise MedmlError("no such file or folder", root)
    files = [root] if root.is_file() else _walk(root)
    base = root.parent if root.is_file() else root
    failures: list[tuple[str, str]] = []
    cases: list[Case] = []
    dicom_headers: list[tuple[Path, Any]] = []
    consumed: set[Path] = set()
    images_by_folder: dict[Path, list[Path]] = defaultdict(list)

    # WFDB headers first, so their signal files are claimed before they could be mistaken for anything else.
    for path in sorted(files, key=lambda p: p.suffix.lower() != ".hea"):
        if path in consumed:
            continue
        kind = sniff(path)
        if kind is None:
            if path.suffix.lower() in SIDECAR_SUFFIXES or path.suffix.lower() in (
                ".dat",
                ".atr",
                ".xyz",
                ".img",
                ".raw",
                ".zraw",
            ):
                continue
            failures.append((str(path), "unrecognised file format (not DICOM, NIfTI, MHA, NRRD, WFDB, image, video)"))
            continue
        if kind == "dicom":
            try:
                dicom_headers.append((path, _header(path)))
            except MedmlError as exc:
                failures.append((str(path), exc.reason))
            continue
        if kind == "wfdb":
            members = _wfdb_files(path)
            consumed.update(members)
            cases.append(Case(_relative_id(path, base), "wfdb", members, {"record": path.stem}))
        elif kind == "image":
            images_by_folder[path.parent].append(path)
        else:
            paths = [path]
            if kind == "mha" and path.suffix.lower() == ".mhd":
                paths += _mhd_data_files(path)
                consumed.update(paths)
            cases.append(Case(_relative_id(path, base), kind, paths, {}))

    for folder, images in images_by_folder.items():
        if (
            frame_folders
            and len(images) >= 2
            and all(p.stem.isdigit() for p in images)
            and len({p.suffix.lower() for p in images}) == 1
        ):
            ordered = sorted(images, key=lambda p: int(p.stem))
            cases.append(Case(_relative_id(folder, base), "frames", ordered, {"n_frames": len(ordered)}))
        else:
            cases.extend(Case(_relative_id(p, base), "image", [p], {}) for p in images)

    dicom_cases, dicom_failures = _group_dicom(dicom_headers, base)
    cases.extend(dicom_cases)
    failures.extend(dicom_failures)
    _make_unique(cases)
    cases.sort(key=lambda c: c.case_id)
    return cases, failures


def _walk(root: Path) -> list[Path]:
    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(folder) / n for n in sorted(names) if not n.startswith("."))
    return out


def _mhd_data_files(mhd: Path) -> list[Path]:
    for line in mhd.read_text("latin-1", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile" and value.strip() not in ("LOCAL", "LIST"):
            data = mhd.parent / value.strip()
            return [data] if data.is_file() else []
    return []


def _group_dicom(headers: list[tuple[Path, Any]], base: Path) -> tuple[list[Case], list[tuple[str, str]]]:
    from medml.io.dicom import _sop_class_name

    failures: list[tuple[str, str]] = []
    cases: list[Case] = []
    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path, ds in headers:
        sop_class = str(ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            continue  # an index of the other files, which the walk finds anyway
        meta = _dicom_meta(ds, path)
        idents = _patient_identifiers(ds)
        if "WaveformSequence" in ds:
            cases.append(_dicom_case(path, base, "dicom_ecg", [path], meta, idents))
        elif sop_class in NON_IMAGE_PIXEL_CLASSES:
            failures.append((str(path), f"not an input image: {NON_IMAGE_PIXEL_CLASSES[sop_class]}"))
        elif "Rows" not in ds:
            failures.append((str(path), f"no pixel data or waveform ({_sop_class_name(ds)})"))
        elif _frames(ds) > 1:
            cases.append(_dicom_case(path, base, "dicom_multiframe", [path], meta, idents))
        else:
            uid = str(ds.get("SeriesInstanceUID", "") or f"no-series-uid:{path}")
            series[uid].append((path, ds))

    folders_per_series = defaultdict(set)
    for uid, members in series.items():
        folders_per_series[_common_folder([p for p, _ in members])].add(uid)
    for uid, members in series.items():
        paths = sorted(p for p, _ in members)
        first = members[0][1]
        idents = set().union(*(_patient_identifiers(ds) for _, ds in members[:1]))
        volume_like = len(members) >= 2 and all(
            "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in members
        )
        if not volume_like:
            for path, ds in members:
                cases.append(_dicom_case(path, base, "dicom_image", [path], _dicom_meta(ds, path), idents))
            continue
        folder = _common_folder(paths)
        meta = _dicom_meta(first, folder)
        meta["n_files"] = len(paths)
        case_id = _relative_id(folder, base)
        if len(folders_per_series[folder]) > 1:
            number = first.get("SeriesNumber")
            suffix = f"series{number}" if number not in (None, "") else hashlib.sha1(uid.encode()).hexdigest()[:8]
            case_id = f"{case_id}__{suffix}"
        cases.append(Case(_strip_identifiers(case_id, idents), "dicom_series", paths, meta))
    return cases, failures


def _frames(ds: Any) -> int:
    from medml.io.dicom import number_of_frames

    return number_of_frames(ds)


def _common_folder(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def _dicom_meta(ds: Any, path: Path) -> dict[str, Any]:
    from medml.io.dicom import _sop_class_name

    meta: dict[str, Any] = {"n_files": 1}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
        value = ds.get(key)
        if value not in (None, ""):
            meta[key] = str(value)
    meta["sop_class"] = _sop_class_name(ds)
    frames = _frames(ds)
    if frames > 1:
        meta["NumberOfFrames"] = frames
    return meta


def _dicom_case(path: Path, base: Path, kind: str, paths: list[Path], meta: dict, idents: set[str]) -> Case:
    return Case(_strip_identifiers(_relative_id(path, base), idents), kind, paths, meta)


def _make_unique(cases: list[Case]) -> None:
    seen: dict[str, int] = {}
    for case in sorted(cases, key=lambda c: (c.case_id, str(c.paths[0]))):
        count = seen.get(case.case_id, 0)
        seen[case.case_id] = count + 1
        if count:
            case.case_id = f"{case.case_id}_{count + 1}"
