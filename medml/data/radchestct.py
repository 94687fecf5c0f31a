"""RAD-ChestCT (Duke; Draelos et al., MedIA 2021; Zenodo record 6406114) for external evaluation of the ``ct``
pipeline (spec part 2, §2.7; card: ``datasets/rad-chestct.md``).

The public release holds 3,630 volumes as compressed NumPy archives ``<NoteAcc_DEID>.npz`` (``trn*``, ``val*``,
``tst*``) with one array ``ct`` and the labels in ``img{train,valid,test}_Abnormality_and_Location_Labels.csv``
(``NoteAcc_DEID`` + ``abnormality*location`` 0/1 columns). The volumes carry no header: their geometry is fixed by
the authors' preprocessing (``rachellea/ct-volume-preprocessing``): int16 Hounsfield units clipped to
[-1000, 1000], resampled to 0.8 x 0.8 x 0.8 mm, axial acquisitions only, stored (slices, rows, columns) with the
slices ordered from the most superior down, rows running anterior -> posterior and columns right -> left, i.e.
array axes I, P, L. Both are `RadChestSettings` keys (``data.radchest`` in the ``ct`` config), for copies that were
converted differently.

Labels: a CT-RATE label is positive when its RAD-ChestCT abnormality is present at any location. The mapping is the
public third-party one that yields 16 shared labels (the CT-SSG authors' own mapping was not found): *Coronary artery
wall calcification* is dropped as a duplicate of ``calcification`` and *Mosaic attenuation pattern* has no
counterpart; both are NaN and left out of every metric.

Every archive is checked before anything is allocated from it: the ``.npy`` header's dtype and shape against the
memory budget (`medml.io.guard`), and against the sizes the zip directory declares, so a truncated, damaged or lying
file stops with one line naming it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from medml.data.ctrate import LABELS, CtRateDataset, fill_cache
from medml.errors import CorruptFileError, DataLayoutError, UnsupportedFormatError
from medml.io.guard import check_compressed_size, check_memory, reading
from medml.io.types import Volume
from medml.transforms.ct import axcodes_directions
from medml.utils.files import cache_root

#: CT-RATE label -> RAD-ChestCT abnormality names (any location); None: no counterpart.
CTRATE_TO_RADCHEST: dict[str, tuple[str, ...] | None] = {
    "Medical material": ("catheter_or_port",),
    "Arterial wall calcification": ("calcification",),
    "Cardiomegaly": ("cardiomegaly",),
    "Pericardial effusion": ("pericardial_effusion",),
    "Coronary artery wall calcification": None,
    "Hiatal hernia": ("hernia",),
    "Lymphadenopathy": ("lymphadenopathy",),
    "Emphysema": ("emphysema",),
    "Atelectasis": ("atelectasis",),
    "Lung nodule": ("nodule", "nodulegr1cm"),
    "Lung opacity": ("opacity",),
    "Pulmonary fibrotic sequela": ("scarring",),
    "Pleural effusion": ("pleural_effusion",),
    "Mosaic attenuation pattern": None,
    "Peribronchial thickening": ("bronchial_wall_thickening",),
    "Consolidation": ("consolidation",),
    "Bronchiectasis": ("bronchiectasis",),
    "Interlobular septal thickening": ("septal_thickening",),
}
SHARED_LABELS = tuple(k for k, v in CTRATE_TO_RADCHEST.items() if v is not None)
SHARED_INDEX = tuple(LABELS.index(k) for k in SHARED_LABELS)

#: Split -> labels CSV of the release. ``all`` (every CSV present) is also accepted by `read_split`.
LABEL_FILES = {
    "train": "imgtrain_Abnormality_and_Location_Labels.csv",
    "valid": "imgvalid_Abnormality_and_Location_Labels.csv",
    "test": "imgtest_Abnormality_and_Location_Labels.csv",
}
ID_COLUMN = "NoteAcc_DEID"
ARRAY_KEY = "ct"
RELEASE_SPACING = (0.8, 0.8, 0.8)  # mm along the array axes (slices, rows, columns)
RELEASE_AXCODES = "IPL"  # where the array axes (slices, rows, columns) point
MAX_SIDE = 2048  # voxels per axis; the release's volumes are ~450 per side
MIN_SIDE = 8


@dataclass(frozen=True)
class RadChestVolume:
    """One labelled volume: its archive and its 18 CT-RATE targets (NaN where RAD-ChestCT has no counterpart)."""

    name: str
    split: str
    path: Path
    labels: tuple[float, ...]


def ctrate_targets(present: Iterable[str] | Mapping[str, float]) -> np.ndarray:
    """18 CT-RATE targets (0/1, NaN where RAD-ChestCT has no counterpart) from a scan's RAD-ChestCT findings.

    ``present`` is either the abnormality names found in the scan, or a mapping of RAD-ChestCT label columns
    (``abnormality*location`` or plain ``abnormality``) to 0/1.
    """
    if isinstance(present, Mapping):
        found = {str(k).split("*")[0] for k, v in present.items() if float(v) > 0.5}
    else:
        found = {str(k).split("*")[0] for k in present}
    out = np.full(len(LABELS), np.nan)
    for j, label in enumerate(LABELS):
        names = CTRATE_TO_RADCHEST[label]
        if names is not None:
            out[j] = float(any(n in found for n in names))
    return out


# ----- layout -----------------------------------------------------------------------------------------------------


def _near(data_dir: Path, name: str) -> Path | None:
    """``name`` in ``data_dir`` or one or two folder levels below it (the Zenodo parts unpack into folders)."""
    for pattern in (name, f"*/{name}", f"*/*/{name}"):
        found = sorted(data_dir.glob(pattern))
        if found:
            return found[0]
    return None


def label_files(data_dir: str | Path) -> dict[str, Path]:
    """The release's labels CSVs found under ``data_dir``, by split."""
    data_dir = Path(data_dir)
    found = {split: _near(data_dir, name) for split, name in LABEL_FILES.items()}
    return {split: path for split, path in found.items() if path is not None}


def is_layout(data_dir: str | Path) -> bool:
    """True when ``data_dir`` holds at least one RAD-ChestCT labels CSV."""
    return bool(label_files(data_dir))


def index_volumes(data_dir: str | Path) -> dict[str, Path]:
    """``NoteAcc_DEID`` -> archive, for every ``*.npz`` under ``data_dir``; one name in two places is an error."""
    index: dict[str, Path] = {}
    for path in sorted(Path(data_dir).rglob("*.npz")):
        if path.stem in index:
            raise DataLayoutError(f"volume {path.stem} is in two places (also {index[path.stem]})", path)
        index[path.stem] = path
    return index


def _read_labels(path: Path) -> tuple[list[str], list[tuple[str, np.ndarray]]]:
    with reading(path, "labels CSV"), path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or ID_COLUMN not in header:
            raise DataLayoutError(
                f"missing column '{ID_COLUMN}' (found {', '.join((header or [])[:6]) or 'none'})", path
            )
        id_at = header.index(ID_COLUMN)
        columns = [(i, c) for i, c in enumerate(header) if i != id_at]
        if not any("*" in c for _, c in columns):
            raise DataLayoutError("no 'abnormality*location' label columns", path)
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataLayoutError(f"line {line} has {len(row)} fields, the header {len(header)}", path)
            values = np.zeros(len(columns))
            for k, (i, name) in enumerate(columns):
                text = row[i].strip()
                if text not in ("0", "1", "0.0", "1.0"):
                    raise DataLayoutError(f"line {line}: {name} is {text!r}, not 0 or 1", path)
                values[k] = float(text)
            rows.append((row[id_at].strip(), values))
    return [c for _, c in columns], rows


@dataclass
class SplitListing:
    """A split's labelled volumes and what did not match (label rows without an archive)."""

    volumes: list[RadChestVolume]
    label_rows: int
    missing: list[str]


def read_split(data_dir: str | Path, split: str) -> SplitListing:
    """Labelled volumes of ``train``, ``valid`` (``val``), ``test`` or ``all``; label rows whose archive is not on
    disk are listed in ``missing`` (the labels CSVs may name volumes the public release does not ship); none found
    at all is an error naming the CSV."""
    split = {"val": "valid"}.get(split, split)
    files = label_files(data_dir)
    if split == "all":
        wanted = list(files)
    elif split in LABEL_FILES:
        wanted = [split]
    else:
        raise DataLayoutError(f"unknown RAD-ChestCT split '{split}' (train, valid, test, all)")
    if not wanted or any(s not in files for s in wanted):
        name = LABEL_FILES.get(wanted[0] if wanted else "test")
        raise DataLayoutError(f"missing RAD-ChestCT labels CSV {name}", Path(data_dir))
    archives = index_volumes(data_dir)
    volumes, missing, n_rows = [], [], 0
    for s in wanted:
        columns, rows = _read_labels(files[s])
        n_rows += len(rows)
        for name, values in rows:
            path = archives.get(name)
            if path is None:
                missing.append(name)
                continue
            targets = ctrate_targets(dict(zip(columns, values)))
            volumes.append(RadChestVolume(name, s, path, tuple(float(t) for t in targets)))
    if not volumes:
        raise DataLayoutError(f"none of the {n_rows} labelled volumes has its .npz under the folder", files[wanted[0]])
    return SplitListing(volumes, n_rows, missing)


def check_layout(data_dir: str | Path) -> None:
    """At least one labels CSV, readable, with at least one of its volumes on disk (raises `DataLayoutError`)."""
    files = label_files(data_dir)
    if not files:
        raise DataLayoutError(f"no RAD-ChestCT labels CSV ({', '.join(LABEL_FILES.values())})", Path(data_dir))
    read_split(data_dir, "all")


# ----- volumes ------------------------------------------------------------------------------------------------------


def _array_member(archive: zipfile.ZipFile, key: str, path: Path) -> zipfile.ZipInfo:
    members = [i for i in archive.infolist() if i.filename.endswith(".npy")]
    for info in members:
        if info.filename == f"{key}.npy":
            return info
    if len(members) == 1:  # a single unnamed array (``arr_0``), as other conversions write
        return members[0]
    names = ", ".join(i.filename[:-4] for i in members[:6]) or "none"
    raise UnsupportedFormatError(f"no array '{key}' in the archive (found: {names})", path)


@contextlib.contextmanager
def _damaged_zip(path: Path) -> Iterator[None]:
    try:
        yield
    except zipfile.BadZipFile as exc:  # bad CRC, bad local header, ...
        raise CorruptFileError(f"damaged .npz archive ({exc})", path) from None


def read_npz_array(path: str | Path, key: str = ARRAY_KEY) -> np.ndarray:
    """The 3D array ``key`` of a ``.npz``, checked before it is inflated.

    The ``.npy`` header must name a plain numeric dtype and a 3D shape of sane sides whose size fits the memory
    budget (as the raw array plus its float32 copy), the zip directory must declare exactly that many bytes, and
    the compressed stream must be long enough to hold them. Truncated, damaged or lying files raise a one-line
    `medml.errors.ReadError` naming ``path``.
    """
    path = Path(path)
    with reading(path, "RAD-ChestCT volume"):
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise CorruptFileError("not a complete .npz (zip) archive: truncated or damaged", path) from None
        with archive, _damaged_zip(path):
            info = _array_member(archive, key, path)
            with archive.open(info) as fh:
                version = npy_format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
                else:
                    raise UnsupportedFormatError(f".npy format version {version} in {info.filename}", path)
                header_len = fh.tell()
                if dtype.kind not in "iuf" or dtype.hasobject or dtype.itemsize > 8:
                    raise UnsupportedFormatError(f"array '{key}' has dtype {dtype}, not a number type", path)
                if len(shape) != 3 or not all(MIN_SIDE <= s <= MAX_SIDE for s in shape):
                    raise UnsupportedFormatError(
                        f"array '{key}' has shape {tuple(shape)}; a CT volume is 3D with {MIN_SIDE}..{MAX_SIDE} "
                        "voxels per axis",
                        path,
                    )
                count = int(np.prod(shape, dtype=np.int64))
                nbytes = count * dtype.itemsize
                check_memory(nbytes + 4 * count, f"a {'x'.join(map(str, shape))} {dtype} volume", path)
                if info.file_size != header_len + nbytes:
                    raise CorruptFileError(
                        f"the .npy header promises {'x'.join(map(str, shape))} {dtype} ({nbytes} bytes) but the "
                        f"archive declares {max(info.file_size - header_len, 0)} bytes of data",
                        path,
                    )
                if info.compress_type == zipfile.ZIP_STORED:
                    if info.compress_size < info.file_size:
                        raise CorruptFileError("truncated: the stored array is shorter than declared", path)
                else:
                    check_compressed_size(info.compress_size, nbytes, path)
                data = fh.read(nbytes)
                if len(data) != nbytes:
                    raise CorruptFileError(f"truncated: {len(data)} of {nbytes} bytes of array data", path)
                fh.read(1)  # reach the end of the member so that zipfile verifies its CRC
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array


def check_hu(array: np.ndarray, path: str | Path) -> None:
    """Refuse arrays that are not Hounsfield units: non-finite values, no air, or values no CT reaches."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CorruptFileError("the volume has NaN or infinite values", path)
    lo, hi = float(array.min()), float(array.max())
    if lo > -500:
        raise UnsupportedFormatError(
            f"values span [{lo:g}, {hi:g}] with no air below -500 HU: not Hounsfield units (RAD-ChestCT volumes are "
            "HU clipped to [-1000, 1000])",
            path,
        )
    if lo < -4096 or hi > 32767:
        raise UnsupportedFormatError(f"values span [{lo:g}, {hi:g}], outside any Hounsfield range", path)


@dataclass(frozen=True)
class RadChestSettings:
    """How the archives map to patient space (the release's values by default)."""

    spacing: tuple[float, float, float] = RELEASE_SPACING  # mm along (slices, rows, columns)
    axcodes: str = RELEASE_AXCODES  # where (slices, rows, columns) point
    key: str = ARRAY_KEY


def load_volume(path: str | Path, settings: RadChestSettings = RadChestSettings()) -> Volume:
    """One archive as a `Volume` in HU with the release's fixed geometry (no header exists to read it from)."""
    path = Path(path)
    array = read_npz_array(path, settings.key)
    check_hu(array, path)
    # Array axes (0, 1, 2) = (z, y, x) index axes of the Volume; its direction columns are the (x, y, z) ones.
    directions = axcodes_directions(settings.axcodes)  # row a: LPS direction of array axis a
    direction = directions[::-1].T
    spacing_zyx = settings.spacing
    return Volume(
        np.ascontiguousarray(array, dtype=np.float32),
        (float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0])),
        (0.0, 0.0, 0.0),
        direction,
        {"Modality": "CT"},
    )


# ----- cache and dataset -----------------------------------------------------------------------------------------


def cache_name(item: RadChestVolume) -> str:
    """Cache file of one volume, tagged with the archive's size and time so a replaced file is never stale."""
    stat = item.path.stat()
    return f"{item.name}.{hashlib.sha1(f'{stat.st_size}:{stat.st_mtime_ns}'.encode()).hexdigest()[:10]}.npy"


def cache_dir(data_dir: str | Path, preprocessing: dict[str, Any]) -> Path:
    """Cache folder for one dataset copy and one preprocessing: never inside the dataset folder."""
    key = hashlib.sha256(f"{Path(data_dir).resolve()}|{sorted(preprocessing.items())}".encode()).hexdigest()[:16]
    return cache_root() / "rad-chestct" / key


def build_cache(
    data_dir: str | Path,
    volumes: Sequence[RadChestVolume],
    transform: Any,
    preprocessing: dict[str, Any],
    settings: RadChestSettings = RadChestSettings(),
    progress: bool = False,
) -> Path:
    """Preprocess each volume once into ``<cache>/<name>.<tag>.npy`` (float16; atomic, so a killed run resumes)."""
    folder = cache_dir(data_dir, {**preprocessing, "radchest": repr(settings)})

    def load(item: RadChestVolume) -> Volume:
        return load_volume(item.path, settings)

    fill_cache(folder, data_dir, preprocessing, volumes, cache_name, load, transform, "rad-chestct cache", progress)
    return folder


class RadChestDataset(CtRateDataset):
    """Cached volumes: ``{"image": (D, H, W) float32, "label": (18,) float32 with NaN, "name", "index"}``."""

    cache_name = staticmethod(cache_name)

    def targets(self) -> np.ndarray:
        return np.array([v.labels for v in self.volumes], dtype=np.float32)
