"""CT-RATE in its official layout (Hugging Face ``ibrahimhamamci/CT-RATE``; card: ``datasets/ct-rate.md``).

Layout (spec part 2, §2.6)::

    dataset/train/train_<patient>/train_<patient>_<scan>/train_<patient>_<scan>_<recon>.nii.gz
    dataset/valid/valid_<patient>/valid_<patient>_<scan>/valid_<patient>_<scan>_<recon>.nii.gz
    dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv   VolumeName + 18 binary columns
    dataset/metadata/{train,validation}_metadata.csv                      VolumeName, RescaleSlope, RescaleIntercept,
                                                                          XYSpacing ("[0.7, 0.7]"), ZSpacing, ...

The NIfTI headers of the release are not trustworthy (HF discussion #58 "blank nifti header", PR #62 "fixed
spacings"), so Hounsfield units come from the metadata CSV's slope/intercept applied to the *stored* values and the
voxel spacing from its XYSpacing/ZSpacing; only the direction cosines are taken from the header (with a configurable
fallback when the header has none). ``valid`` is the test set (no public test split exists); the validation fold is
carved out of ``train`` by patient, so no patient, scan or reconstruction is in two folds.
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medml.errors import DataLayoutError
from medml.io.types import LPS_TO_RAS, Volume
from medml.transforms.ct import axcodes_directions
from medml.utils.files import atomic_path, cache_root, write_json

#: The 18 abnormalities, in the CSV's column order and spelling.
LABELS = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")
#: Official split folder -> (labels CSV, metadata CSV).
SPLIT_FILES = {
    "train": ("multi_abnormality_labels/train_predicted_labels.csv", "metadata/train_metadata.csv"),
    "valid": ("multi_abnormality_labels/valid_predicted_labels.csv", "metadata/validation_metadata.csv"),
}
NAME_RE = re.compile(r"^(train|valid)_([A-Za-z0-9]+)_([A-Za-z0-9]+)_([A-Za-z0-9]+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class CtRateVolume:
    """One reconstruction: its file, labels and the metadata that turn stored values into HU on the true grid."""

    name: str
    split: str
    patient: str
    scan: str
    path: Path
    labels: tuple[int, ...]
    slope: float
    intercept: float
    spacing: tuple[float, float, float]  # (x, y, z) mm, from the metadata CSV


def dataset_root(data_dir: str | Path) -> Path:
    """The ``dataset`` folder: ``data_dir/dataset`` (as downloaded) or ``data_dir`` itself."""
    data_dir = Path(data_dir)
    return data_dir / "dataset" if (data_dir / "dataset").is_dir() else data_dir


def parse_name(name: str, where: Path | None = None) -> tuple[str, str, str, str]:
    """``valid_53_a_1.nii.gz`` -> (split, patient ``valid_53``, scan ``valid_53_a``, reconstruction ``1``)."""
    m = NAME_RE.match(name)
    if not m:
        raise DataLayoutError(f"VolumeName '{name}' is not <split>_<patient>_<scan>_<recon>.nii.gz", where)
    split, patient, scan, recon = m.group(1), m.group(2), m.group(3), m.group(4)
    return split, f"{split}_{patient}", f"{split}_{patient}_{scan}", recon


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataLayoutError("missing CSV of the CT-RATE layout", path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataLayoutError(f"missing column '{missing[0]}' (found {', '.join(columns[:8]) or 'none'})", path)
        return list(reader)


def _number(text: str, column: str, name: str, path: Path) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataLayoutError(f"{name}: column {column} is not a number ({text!r})", path) from None
    if not np.isfinite(value):
        raise DataLayoutError(f"{name}: column {column} is not finite ({text!r})", path)
    return value


def _xy_spacing(text: str, name: str, path: Path) -> tuple[float, float]:
    """``"[0.7, 0.7]"`` (or a bare number) -> (x, y) mm."""
    try:
        value = ast.literal_eval(text.strip())
        values = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
    except (ValueError, SyntaxError, TypeError):
        raise DataLayoutError(f"{name}: XYSpacing {text!r} is not '[x, y]' in mm", path) from None
    if not values or len(values) > 2 or not all(np.isfinite(v) and 0.05 < v < 20 for v in values):
        raise DataLayoutError(f"{name}: XYSpacing {text!r} is not '[x, y]' in mm", path)
    return (values[0], values[-1])


def read_split(data_dir: str | Path, split: str) -> list[CtRateVolume]:
    """Every labelled volume of an official split (``train`` or ``valid``), checked against the disk and metadata.

    Raises a one-line `DataLayoutError` naming the file for a missing CSV or column, a label row whose NIfTI is
    missing, a volume without metadata, or a value that is not a number.
    """
    if split not in SPLIT_FILES:
        raise DataLayoutError(f"unknown CT-RATE split '{split}' (train, valid)")
    root = dataset_root(data_dir)
    labels_csv, meta_csv = (root / p for p in SPLIT_FILES[split])
    label_rows = _read_csv(labels_csv, ("VolumeName", *LABELS))
    meta_rows = {r["VolumeName"]: r for r in _read_csv(meta_csv, METADATA_COLUMNS)}
    volumes = []
    for row in label_rows:
        name = row["VolumeName"].strip()
        file_split, patient, scan, _ = parse_name(name, labels_csv)
        if file_split != split:
            raise DataLayoutError(f"{name} is listed in the {split} labels", labels_csv)
        path = root / split / patient / scan / name
        if not path.is_file():
            raise DataLayoutError(f"volume listed in {labels_csv.name} is missing", path)
        meta = meta_rows.get(name)
        if meta is None:
            raise DataLayoutError(f"{name} has no row", meta_csv)
        values = []
        for label in LABELS:
            v = _number(row[label], label, name, labels_csv)
            if v not in (0.0, 1.0):
                raise DataLayoutError(f"{name}: label {label} is {row[label]!r}, not 0 or 1", labels_csv)
            values.append(int(v))
        slope = _number(meta["RescaleSlope"], "RescaleSlope", name, meta_csv)
        intercept = _number(meta["RescaleIntercept"], "RescaleIntercept", name, meta_csv)
        sx, sy = _xy_spacing(meta["XYSpacing"], name, meta_csv)
        sz = _number(meta["ZSpacing"], "ZSpacing", name, meta_csv)
        if slope == 0 or not 0.05 < sz < 50:
            raise DataLayoutError(f"{name}: implausible RescaleSlope {slope} or ZSpacing {sz}", meta_csv)
        volumes.append(CtRateVolume(name, split, patient, scan, path, tuple(values), slope, intercept, (sx, sy, sz)))
    if not volumes:
        raise DataLayoutError("no volumes listed", labels_csv)
    return volumes


def check_layout(data_dir: str | Path) -> None:
    """Both official splits readable, every listed file present (raises `DataLayoutError`)."""
    for split in SPLIT_FILES:
        read_split(data_dir, split)


def _header_direction(affine: np.ndarray, fallback: str) -> np.ndarray:
    """Direction cosines (LPS, SimpleITK convention) from a NIfTI affine; ``fallback`` axcodes if it has none."""

    lps = LPS_TO_RAS @ np.asarray(affine, float)[:3, :3]
    norms = np.linalg.norm(lps, axis=0)
    if np.all(norms > 1e-6):
        direction = lps / norms
        if abs(abs(np.linalg.det(direction)) - 1.0) < 1e-3:
            return direction
    # axcodes name where (x, y, z) index axes point; the direction matrix has them as columns.
    return axcodes_directions(fallback).T


def load_volume(item: CtRateVolume, fallback_axcodes: str = "LPS") -> Volume:
    """Read one reconstruction in HU on its true grid: stored values x metadata slope + intercept, metadata spacing."""
    import nibabel as nib

    try:
        img = nib.load(str(item.path))
        raw = img.dataobj.get_unscaled() if hasattr(img.dataobj, "get_unscaled") else np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated or corrupt files
        raise DataLayoutError(f"cannot read NIfTI ({type(exc).__name__}: {str(exc)[:120]})", item.path) from None
    raw = np.asarray(raw)
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise DataLayoutError(f"a {raw.ndim}D NIfTI {raw.shape}; CT-RATE volumes are 3D", item.path)
    hu = raw.astype(np.float32) * np.float32(item.slope) + np.float32(item.intercept)
    direction = _header_direction(img.affine, fallback_axcodes)
    # nibabel indexes (x, y, z); medml volumes are (z, y, x). The origin is irrelevant: grids are centred.
    return Volume(np.ascontiguousarray(hu.transpose(2, 1, 0)), item.spacing, (0.0, 0.0, 0.0), direction, {})


def patient_fold(patient: str, folds: int, seed: int) -> int:
    """Fold of a patient: a hash of (seed, patient id), so it does not depend on file order or on other patients."""
    digest = hashlib.sha1(f"{seed}:{patient}".encode()).hexdigest()
    return int(digest[:12], 16) % folds


def split_train_val(
    volumes: Sequence[CtRateVolume], folds: int, fold: int, seed: int
) -> tuple[list[CtRateVolume], list[CtRateVolume]]:
    """Patient-level K-fold split of CT-RATE train: fold ``fold`` validates, the rest trains."""
    train = [v for v in volumes if patient_fold(v.patient, folds, seed) != fold]
    val = [v for v in volumes if patient_fold(v.patient, folds, seed) == fold]
    return train, val


def cache_name(item: CtRateVolume) -> str:
    """Cache file of one volume: its name plus a tag of the source file and its metadata, so a replaced or edited
    volume (same name, new content) is never served from a stale cache."""
    stat = item.path.stat()
    tag = f"{stat.st_size}:{stat.st_mtime_ns}:{item.slope}:{item.intercept}:{item.spacing}"
    return f"{item.name}.{hashlib.sha1(tag.encode()).hexdigest()[:10]}.npy"


def cache_dir(data_dir: str | Path, preprocessing: dict[str, Any]) -> Path:
    """Cache folder for one dataset copy and one preprocessing: never inside the dataset folder."""
    key = hashlib.sha256(f"{Path(data_dir).resolve()}|{sorted(preprocessing.items())}".encode()).hexdigest()[:16]
    return cache_root() / "ct-rate" / key


def build_cache(
    data_dir: str | Path,
    volumes: Sequence[CtRateVolume],
    transform: Any,
    preprocessing: dict[str, Any],
    fallback_axcodes: str = "LPS",
    progress: bool = False,
) -> Path:
    """Preprocess each volume once into ``<cache>/<VolumeName>.<tag>.npy`` (float16); existing files are kept.

    Files appear atomically, so a killed ``prepare`` resumes where it stopped; training memory-maps them.
    """
    folder = cache_dir(data_dir, preprocessing)
    load = functools.partial(load_volume, fallback_axcodes=fallback_axcodes)
    fill_cache(folder, data_dir, preprocessing, volumes, cache_name, load, transform, "ct-rate cache", progress)
    return folder


def fill_cache(
    folder: Path,
    data_dir: str | Path,
    preprocessing: dict[str, Any],
    volumes: Sequence[Any],
    name_of: Callable[[Any], str],
    load: Callable[[Any], Any],
    transform: Any,
    desc: str,
    progress: bool = False,
) -> None:
    """Write each volume not yet in ``folder`` as ``name_of(volume)``: ``transform(load(volume))`` in float16,
    atomically, so a killed ``prepare`` resumes where it stopped (CT-RATE and RAD-ChestCT share it)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "preprocessing.json", {"data_dir": str(Path(data_dir).resolve()), **preprocessing})
    todo = [v for v in volumes if not (folder / name_of(v)).is_file()]
    for item in tqdm(todo, desc=desc, unit="volume", disable=not progress):
        image = transform({"image": load(item)})["image"]
        with atomic_path(folder / name_of(item)) as tmp:
            np.save(tmp, np.asarray(image, dtype=np.float16))


class CtRateDataset(Dataset):
    """Cached, preprocessed volumes: ``{"image": (D, H, W) float32, "label": (18,) float32, "name", "index"}``."""

    cache_name = staticmethod(cache_name)  # the file of a volume in the cache (RAD-ChestCT names its own)

    def __init__(self, volumes: Sequence[Any], cache: Path):
        self.volumes, self.cache = list(volumes), Path(cache)
        self.files = [self.cache / self.cache_name(v) for v in self.volumes]

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.volumes[index]
        image = np.load(self.files[index], mmap_mode="r")
        return {
            "image": torch.from_numpy(np.asarray(image, dtype=np.float32)),
            "label": torch.tensor(item.labels, dtype=torch.float32),
            "name": item.name,
            "index": index,
        }

    def targets(self) -> np.ndarray:
        return np.array([v.labels for v in self.volumes], dtype=np.int8)
