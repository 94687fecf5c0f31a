"""Find the cases in a folder: classify files by their content and group DICOM slices into series.

File names and extensions are not trusted: a DICOM file may have no extension (PACS exports) and a ``.dcm`` may
be anything. Each file's first bytes decide its format; DICOM headers are parsed (without pixel data) to group
single-frame slices by SeriesInstanceUID and to tell volumes, cines, 2D images and waveform ECGs apart.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import struct
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from medml.errors import CorruptFileError, MedmlError, OutsideInputError
from medml.io.dicom import looks_like_raw_dataset, number_of_frames, read_dataset, sop_class_name
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
        except (OSError, EOFError, zlib.error):
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
    if looks_like_raw_dataset(head):
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


def _wfdb_files(hea: Path, real_root: Path) -> list[Path]:
    """The header plus the signal files it names (that exist); a name that leaves the input folder is refused."""
    files = [hea]
    lines = [ln for ln in hea.read_text("latin-1").splitlines() if ln.strip() and not ln.startswith("#")]
    for line in lines[1:]:
        name = line.split()[0]
        if name == "~":
            continue
        candidate = hea.parent / name
        if not _inside(candidate, real_root):
            raise OutsideInputError(f"the header names a signal file outside the input folder ({printable(name)})")
        if candidate.is_file() and candidate not in files:
            files.append(candidate)
    return files


def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path`` (after following every link) stays inside ``real_root`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte in a name from a header
        return False


# What stops a folder run. Anything else a file makes a library raise fails that file only, even BaseException
# subclasses that native decoders raise for bad data (pyo3's PanicException in the Rust JPEG/RLE decoders).
FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)

# Case ids become output folder names: one harmless path component, never one of the tables beside the folders.
MAX_CASE_ID_LENGTH = 100
RESERVED_CASE_IDS = ("predictions.csv", "failures.csv", "run.json")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _safe_name(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return text or "case"


def safe_case_id(text: str) -> str:
    """``text`` made a safe case id: ASCII letters, digits, ``._-`` only, no leading dot, at most
    `MAX_CASE_ID_LENGTH` characters (a long one keeps a hash of the whole text, so it stays stable and distinct),
    never the name of an output table."""
    name = _safe_name(text)
    if name.lower() in RESERVED_CASE_IDS or name.lower().startswith("run.part"):
        name = name.replace(".", "_")
    if len(name) > MAX_CASE_ID_LENGTH:
        digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        name = name[: MAX_CASE_ID_LENGTH - 11].rstrip("._-") + "_" + digest
    return name


def is_safe_case_id(case_id: Any) -> bool:
    """What `safe_case_id` guarantees; the folder runner checks it again before making any output path."""
    return (
        isinstance(case_id, str)
        and len(case_id) <= MAX_CASE_ID_LENGTH
        and _SAFE_ID.fullmatch(case_id) is not None
        and case_id.lower() not in RESERVED_CASE_IDS
        and not case_id.lower().startswith("run.part")
    )


def printable(text: Any) -> str:
    """One printable line: undecodable bytes of a file name (kept by Python as surrogates) and control
    characters are escaped, so names that are not UTF-8 can be written to CSV/JSON and printed."""
    text = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def display_path(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` (POSIX, printable; ``.`` for ``root`` itself), or only its name when it is not
    under ``root``: outputs never carry the absolute path, whose folders are often named after the patient."""
    path, root = Path(path), Path(root)
    for p, r in ((path, root), (resolved_path(path), resolved_path(root))):
        try:
            return printable(p.relative_to(r).as_posix())
        except ValueError:
            continue
    return printable(path.name)


def resolved_path(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def error_reason(exc: BaseException) -> str:
    """The one-line reason a failure row carries. Errors that are not medml's own say ``unexpected`` (a reader
    should have refused the file with a `MedmlError`); an OS error gives its message without the file name."""
    if isinstance(exc, MedmlError):
        return exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    text = " ".join(printable(exc).split()) or "no message"
    return f"unexpected {type(exc).__name__}: {text[:300]}"


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


def relative_case_id(path: Path, root: Path) -> str:
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
    return safe_case_id(name.replace("/", "__"))


def _header(path: Path) -> Any:

    header = read_dataset(path, stop_before_pixels=True, specific_tags=DICOM_HEADER_TAGS)
    try:  # pydicom decodes values lazily: a malformed one (unknown VR, bad length) must fail here, as a read error
        for _ in header:
            pass
    except FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001 - pydicom raises NotImplementedError, ValueError, KeyError, ...
        raise CorruptFileError(f"malformed DICOM header ({type(exc).__name__}: {printable(exc)[:200]})", path) from None
    return header


def discover(root: str | Path, *, frame_folders: bool = True) -> tuple[list[Case], list[tuple[str, str]]]:
    """Walk ``root`` (a folder, recursively, or a single file) and return its cases and the files it could not use.

    Nothing stops the walk: a folder or file that cannot be listed or read, an empty file, a link loop, a link or a
    header reference leading out of ``root``, or a file a parser chokes on each become a failure with the reason.

    Args:
        root: folder or file.
        frame_folders: treat a folder of two or more images named only by frame number (``00000.jpg``, ...) as
            one "frames" video case, as MOSXAV stores its sequences.

    Returns:
        ``(cases, failures)``: cases sorted by case_id, each id a safe file name (`safe_case_id`) unique within
        the discovery; failures as ``(path, reason)`` for what looks like input but cannot be used.
    """
    root = Path(root)
    if not root.exists():
        raise MedmlError("no such file or folder", root)
    failures: list[tuple[str, str]] = []
    real_root = resolved_path(root if root.is_dir() else root.parent)
    files = [root] if root.is_file() else _walk(root, real_root, failures)
    base = root.parent if root.is_file() else root
    cases: list[Case] = []
    dicom_headers: list[tuple[Path, Any]] = []
    consumed: set[Path] = set()
    images_by_folder: dict[Path, list[Path]] = defaultdict(list)

    # WFDB headers first, so their signal files are claimed before they could be mistaken for anything else.
    for path in sorted(files, key=lambda p: p.suffix.lower() != ".hea"):
        if path in consumed:
            continue
        try:
            _classify(path, base, real_root, cases, dicom_headers, consumed, images_by_folder, failures)
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - one hostile file must never stop the walk
            failures.append((str(path), error_reason(exc)))

    for folder, images in images_by_folder.items():
        if (
            frame_folders
            and len(images) >= 2
            and all(p.stem.isdigit() for p in images)
            and len({p.suffix.lower() for p in images}) == 1
        ):
            ordered = sorted(images, key=lambda p: int(p.stem))
            cases.append(Case(relative_case_id(folder, base), "frames", ordered, {"n_frames": len(ordered)}))
        else:
            cases.extend(Case(relative_case_id(p, base), "image", [p], {}) for p in images)

    dicom_cases, dicom_failures = _group_dicom(dicom_headers, base)
    cases.extend(dicom_cases)
    failures.extend(dicom_failures)
    _make_unique(cases)
    cases.sort(key=lambda c: c.case_id)
    return cases, failures


# Files beside WFDB/MHD/Analyze headers: read through their header, never on their own.
DATA_SIDECAR_SUFFIXES = {".dat", ".atr", ".xyz", ".img", ".raw", ".zraw"}


def _classify(
    path: Path,
    base: Path,
    real_root: Path,
    cases: list[Case],
    dicom_headers: list[tuple[Path, Any]],
    consumed: set[Path],
    images_by_folder: dict[Path, list[Path]],
    failures: list[tuple[str, str]],
) -> None:
    """Sort one file into a case, a DICOM header to group, an image of a folder, a failure, or nothing (sidecars)."""
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        failures.append((str(path), f"cannot read the file ({exc.strerror or type(exc).__name__})"))
        return
    kind = sniff(path, head) if head else None
    if kind is None:
        nifti_name = path.name.lower().endswith((".nii", ".nii.gz"))
        if not nifti_name and (suffix in SIDECAR_SUFFIXES or suffix in DATA_SIDECAR_SUFFIXES):
            return
        failures.append((str(path), _unrecognised_reason(path, head)))
        return
    if kind == "dicom":
        dicom_headers.append((path, _header(path)))
        return
    if kind == "wfdb":
        members = _wfdb_files(path, real_root)
        consumed.update(members)
        cases.append(Case(relative_case_id(path, base), "wfdb", members, {"record": path.stem}))
    elif kind == "image":
        images_by_folder[path.parent].append(path)
    else:
        paths = [path]
        if kind == "mha" and suffix == ".mhd":
            paths += _mhd_data_files(path, real_root)
            consumed.update(paths)
        cases.append(Case(relative_case_id(path, base), kind, paths, {}))


def _unrecognised_reason(path: Path, head: bytes) -> str:
    """The true reason a file is not an input: empty, corrupt gzip, a NIfTI name without a NIfTI header, ..."""
    if not head:
        return "empty file (0 bytes)"
    name = path.name.lower()
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                fh.read(544)
        except (OSError, EOFError, zlib.error) as exc:
            return f"corrupt or truncated gzip data ({printable(exc) or type(exc).__name__})"
        return "a gzip file that holds no NIfTI header"
    if name.endswith((".nii", ".nii.gz")):
        return "not a NIfTI file despite its name (no NIfTI header)"
    if name.endswith((".dcm", ".dicom")):
        return "not a DICOM file despite its name (no DICM prefix, no DICOM tags)"
    return "unrecognised file format (not DICOM, NIfTI, MHA, NRRD, WFDB, image, video)"


def _walk(root: Path, real_root: Path, failures: list[tuple[str, str]]) -> list[Path]:
    """Every regular file under ``root`` (hidden names skipped), depth first in name order.

    Links to files inside ``root`` are read like the files; a link to a folder is not followed (its files are
    found where they are, and loops are impossible); links that loop, dangle or leave ``root``, folders that
    cannot be listed and special files each become a failure.
    """
    out: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            failures.append((str(folder), f"cannot list the folder ({exc.strerror or type(exc).__name__})"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    problem = _link_problem(path, real_root)
                    if problem:
                        failures.append((str(path), problem))
                        continue
                    if path.is_dir():
                        failures.append((str(path), "a link to a folder is not followed (its files are read there)"))
                        continue
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(path)
                elif entry.is_file():
                    out.append(path)
                else:
                    failures.append((str(path), "not a regular file (a device, pipe or socket)"))
            except OSError as exc:
                failures.append((str(path), f"cannot read ({exc.strerror or type(exc).__name__})"))
        stack.extend(reversed(subfolders))
    return out


def _link_problem(path: Path, real_root: Path) -> str | None:
    try:
        target = path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if isinstance(exc, FileNotFoundError):
            return "broken symbolic link (its target does not exist)"
        return f"cannot follow the link ({exc.strerror or type(exc).__name__})"
    if not target.is_relative_to(real_root):
        return "the link leads outside the input folder (not followed)"
    return None


def _mhd_data_files(mhd: Path, real_root: Path) -> list[Path]:
    for line in mhd.read_text("latin-1", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile" and value.strip() not in ("LOCAL", "LIST"):
            data = mhd.parent / value.strip()
            if not _inside(data, real_root):
                raise OutsideInputError(
                    f"ElementDataFile names a file outside the input folder ({printable(value.strip())})"
                )
            return [data] if data.is_file() else []
    return []


def _group_dicom(headers: list[tuple[Path, Any]], base: Path) -> tuple[list[Case], list[tuple[str, str]]]:
    failures: list[tuple[str, str]] = []
    cases: list[Case] = []
    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path, ds in headers:
        try:
            _sort_header(path, ds, base, cases, series, failures)
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - a hostile header fails its own file only
            failures.append((str(path), error_reason(exc)))

    folders_per_series = defaultdict(set)
    for uid, members in series.items():
        folders_per_series[_common_folder([p for p, _ in members])].add(uid)
    for uid, members in series.items():
        try:
            cases.extend(_series_cases(uid, members, base, folders_per_series))
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001
            failures.extend((str(p), error_reason(exc)) for p, _ in members)
    return cases, failures


def _sort_header(path: Path, ds: Any, base: Path, cases: list[Case], series: dict, failures: list) -> None:
    """One DICOM header: a case of its own, a slice of a series (added to ``series``), or a failure."""
    sop_class = str(ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return  # an index of the other files, which the walk finds anyway (its paths are never followed)
    meta = dicom_meta(ds, path)
    idents = _patient_identifiers(ds)
    if "WaveformSequence" in ds:
        cases.append(_dicom_case(path, base, "dicom_ecg", [path], meta, idents))
    elif sop_class in NON_IMAGE_PIXEL_CLASSES:
        failures.append((str(path), f"not an input image: {NON_IMAGE_PIXEL_CLASSES[sop_class]}"))
    elif "Rows" not in ds:
        failures.append((str(path), f"no pixel data or waveform ({sop_class_name(ds)})"))
    elif _frames(ds) > 1:
        cases.append(_dicom_case(path, base, "dicom_multiframe", [path], meta, idents))
    else:
        uid = str(ds.get("SeriesInstanceUID", "") or f"no-series-uid:{path}")
        series[uid].append((path, ds))


def _series_cases(uid: str, members: list[tuple[Path, Any]], base: Path, folders_per_series: dict) -> list[Case]:
    """A volume case for slices with positions, else one image case per file."""
    cases: list[Case] = []
    paths = sorted(p for p, _ in members)
    first = members[0][1]
    idents = set().union(*(_patient_identifiers(ds) for _, ds in members[:1]))
    volume_like = len(members) >= 2 and all(
        "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in members
    )
    if not volume_like:
        for path, ds in members:
            cases.append(_dicom_case(path, base, "dicom_image", [path], dicom_meta(ds, path), idents))
        return cases
    folder = _common_folder(paths)
    meta = dicom_meta(first, folder)
    meta["n_files"] = len(paths)
    case_id = relative_case_id(folder, base)
    if len(folders_per_series[folder]) > 1:
        number = first.get("SeriesNumber")
        suffix = f"series{number}" if number not in (None, "") else hashlib.sha1(uid.encode()).hexdigest()[:8]
        case_id = f"{case_id}__{suffix}"
    cases.append(Case(_strip_identifiers(case_id, idents), "dicom_series", paths, meta))
    return cases


def _frames(ds: Any) -> int:

    return number_of_frames(ds)


def _common_folder(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def dicom_meta(ds: Any, path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {"n_files": 1}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
        value = ds.get(key)
        if value not in (None, ""):
            meta[key] = str(value)
    meta["sop_class"] = sop_class_name(ds)
    frames = _frames(ds)
    if frames > 1:
        meta["NumberOfFrames"] = frames
    return meta


def _dicom_case(path: Path, base: Path, kind: str, paths: list[Path], meta: dict, idents: set[str]) -> Case:
    return Case(_strip_identifiers(relative_case_id(path, base), idents), kind, paths, meta)


def _make_unique(cases: list[Case]) -> None:
    """Make every case id safe (`safe_case_id`: DICOM tags such as SeriesNumber end up in ids) and unique, also
    on case-insensitive file systems; the numbering follows the sorted source paths, so it is stable."""
    for case in cases:
        case.case_id = safe_case_id(case.case_id)
    taken = {c.case_id.lower() for c in cases}
    seen: set[str] = set()
    for case in sorted(cases, key=lambda c: (c.case_id, str(c.paths[0]))):
        key = case.case_id.lower()
        if key in seen:
            stem = case.case_id[: MAX_CASE_ID_LENGTH - 6]
            n = 2
            while f"{stem}_{n}".lower() in taken:
                n += 1
            case.case_id = f"{stem}_{n}"
            key = case.case_id.lower()
            taken.add(key)
        seen.add(key)
