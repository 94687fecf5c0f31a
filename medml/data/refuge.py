"""REFUGE (2018) and REFUGE2 (2020) in their released layouts: images, glaucoma labels, disc/cup masks, fovea.

The releases (spec part B2) put each split in an image folder and a ground-truth folder, e.g. for REFUGE-2018::

    Training400/{Glaucoma,Non-Glaucoma}/g0001.jpg, n0001.jpg
    Annotation-Training400/Disc_Cup_Masks/{Glaucoma,Non-Glaucoma}/g0001.bmp
    Annotation-Training400/Fovea_location.xlsx            (index, ImgName, Fovea_X, Fovea_Y)
    REFUGE-Validation400/V0001.jpg
    REFUGE-Validation400-GT/Disc_Cup_Masks/V0001.bmp
    REFUGE-Validation400-GT/Fovea_locations.xlsx           (ID, ImgName, Glaucoma Label, Fovea_X, Fovea_Y)
    REFUGE-Test400/T0001.jpg, REFUGE-Test-GT/...

Folder names differ between the releases and mirrors, so the adapter finds the splits by name (``train``,
``val``, ``test`` in a top-level or second-level folder name; ground-truth folders carry ``annotation``, ``gt``,
``label`` or ``mask``), images by extension, masks as BMPs under the ground-truth folders (keyed by file stem, so
``g0001.bmp`` annotates ``g0001.jpg``), labels from ``Glaucoma`` / ``Non-Glaucoma`` folder names or a label column,
and fovea positions from the XLSX/CSV tables, whose columns are found by header name and otherwise by the official
positions (name in column 2, x/y in columns 3-4 of the training file, 4-5 of the 5-column validation/test files).

Masks are single-channel BMPs at the image size: 0 = cup, 128 = rim, 255 = background (the official evaluator's
``== 0`` and ``< 255``). medml's label maps are {0 background, 1 rim, 2 cup}: `read_mask` / `to_challenge_mask`
convert both ways. The camera is recognised from the image size where it is known (REFUGE-2018: Zeiss Visucam 500
at 2124x2056, Canon CR-2 at 1634x1634); REFUGE2's Kowa/Topcon resolutions were not published, so other sizes are
reported as ``WxH``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medml.errors import DataLayoutError
from medml.io.image import image_size
from medml.utils.files import atomic_path

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
TABLE_SUFFIXES = {".xlsx", ".xls", ".csv"}
CLASS_NAMES = ("background", "rim", "cup")  # medml label ids 0, 1, 2
CHALLENGE_VALUES = {0: 255, 1: 128, 2: 0}  # medml label -> BMP value
# (width, height) -> camera, REFUGE-2018 [V HzFu/REFUGE_baseline README]; either orientation is accepted.
KNOWN_CAMERAS = {(2124, 2056): "Zeiss Visucam 500", (1634, 1634): "Canon CR-2"}
_SPLIT_WORDS = {"train": ("train",), "val": ("val",), "test": ("test",)}
_GT_WORDS = ("annotation", "gt", "label", "mask", "ground")
_SKIP_WORDS = ("illustration",)


@dataclass(frozen=True)
class RefugeItem:
    """One photograph of a split with whatever ground truth the release gives for it."""

    split: str
    name: str  # file stem, the key of masks and table rows (``g0001``, ``V0001``)
    image_path: Path
    mask_path: Path | None
    label: int | None  # 1 glaucoma, 0 not, None unknown
    fovea: tuple[float, float] | None  # (x, y) in original pixels


def camera_for_size(width: int, height: int) -> str:
    """The camera of a REFUGE photograph from its size, or ``"WxH"`` when the size is not a known camera's."""
    return KNOWN_CAMERAS.get((width, height)) or KNOWN_CAMERAS.get((height, width)) or f"{width}x{height}"


def read_mask(path: str | Path) -> np.ndarray:
    """A challenge BMP (0 cup, 128 rim, 255 background; RGB tolerated: channel 0) -> uint8 {0 bg, 1 rim, 2 cup},
    with the official thresholds (cup ``== 0``, disc ``< 255``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            values = np.asarray(img)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataLayoutError(f"cannot read the mask ({exc})", path) from None
    if values.ndim == 3:
        values = values[..., 0]
    if values.ndim != 2:
        raise DataLayoutError(f"a mask must be a 2D image, got shape {values.shape}", path)
    if values.dtype == bool:  # a 1-bit BMP: False (0) would be cup, True background
        values = values.astype(np.uint8) * 255
    labels = np.where(values == 0, 2, np.where(values < 255, 1, 0)).astype(np.uint8)
    return labels


def to_challenge_mask(labels: np.ndarray) -> np.ndarray:
    """{0 bg, 1 rim, 2 cup} -> the BMP values {255, 128, 0} (uint8)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 2):
        raise ValueError("labels must be 0 (background), 1 (rim) or 2 (cup)")
    return np.array([255, 128, 0], dtype=np.uint8)[labels.astype(np.int64)]


def write_challenge_mask(labels: np.ndarray, path: str | Path) -> Path:
    """Write labels as the challenge's single-channel 8-bit BMP."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(to_challenge_mask(labels), mode="L").save(tmp, format="BMP")
    return path


# ----- tables ---------------------------------------------------------------------------------------------------------
def _norm(text: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def read_table(path: Path) -> Any:
    """An XLSX/XLS/CSV table as a pandas DataFrame with its header row (XLSX needs openpyxl)."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_excel(path)
    except ImportError as exc:
        raise DataLayoutError(f"reading {path.suffix} needs a package that is not installed ({exc})", path) from None
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a broken file
        raise DataLayoutError(f"cannot read the table ({type(exc).__name__}: {exc})", path) from None


def _column(headers: list[str], patterns: Iterable[str]) -> int | None:
    for pattern in patterns:
        for i, h in enumerate(headers):
            if re.fullmatch(pattern, h):
                return i
    return None


def parse_table(path: Path) -> dict[str, dict[str, Any]]:
    """``{stem: {"label": int?, "fovea": (x, y)?}}`` from a REFUGE ground-truth table.

    Columns are found by header (``ImgName``/``FileName``, ``Fovea_X``/``Fovea_Y``, ``Glaucoma Label``/``Label``);
    without recognisable headers the official positions are used: 2 columns = (name, label); 4 = (index, name, x,
    y); 5 = (index, name, label, x, y).
    """
    df = read_table(path)
    headers = [_norm(c) for c in df.columns]
    name = _column(
        headers, [r"imgname", r"imagename", r"filename", r"image", r"name", r"img", r"file", r".*name.*", r"image.*"]
    )
    x = _column(headers, [r"foveax.*", r"x", r"xcoord.*", r"fovea.*x"])
    y = _column(headers, [r"foveay.*", r"y", r"ycoord.*", r"fovea.*y"])
    label = _column(headers, [r"glaucomalabel", r"label", r"glaucoma", r"label.*", r"glaucoma.*", r"class", r"gt"])
    n = len(headers)
    if name is None:
        positions = {2: (0, 1, None, None), 4: (1, None, 2, 3), 5: (1, 2, 3, 4)}
        if n not in positions:
            raise DataLayoutError(f"no image-name column among {list(df.columns)}", path)
        name, label, x, y = positions[n]
    if (x is None) != (y is None):
        raise DataLayoutError(f"a fovea x column without a y column (or the reverse) in {list(df.columns)}", path)
    rows: dict[str, dict[str, Any]] = {}
    for r, row in enumerate(df.itertuples(index=False), start=2):
        raw = row[name]
        if raw is None or (isinstance(raw, float) and np.isnan(raw)):
            continue
        stem = Path(str(raw).strip()).stem
        entry: dict[str, Any] = {}
        try:
            if label is not None and not _missing(row[label]):
                entry["label"] = int(float(row[label]) > 0)
            if x is not None and not _missing(row[x]) and not _missing(row[y]):
                entry["fovea"] = (float(row[x]), float(row[y]))
        except (TypeError, ValueError):
            raise DataLayoutError(f"row {r} ({stem}): a label or fovea value is not a number", path) from None
        if entry:
            rows[stem] = entry
    return rows


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


# ----- layout ---------------------------------------------------------------------------------------------------------
def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z]+", name.lower()) if w]


def _split_of(name: str) -> Split | None:
    words = _words(name)
    for split, keys in _SPLIT_WORDS.items():
        if any(w.startswith(k) for w in words for k in keys):
            return split
    return None


def _is_gt(name: str) -> bool:
    return any(w.startswith(k) for w in _words(name) for k in _GT_WORDS)


def _split_folders(root: Path) -> dict[Split, dict[str, list[Path]]]:
    """``{split: {"images": [...], "gt": [...]}}``: folders at depth 1 or 2 named after a split."""
    found: dict[Split, dict[str, list[Path]]] = {}
    candidates = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for folder in list(candidates):
        if _split_of(folder.name) is None:  # a wrapper such as REFUGE2/ holding the split folders
            candidates += [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for folder in candidates:
        split = _split_of(folder.name)
        if split is None:
            continue
        parent_split = _split_of(folder.parent.name) if folder.parent != root else None
        if parent_split is not None:
            continue  # inside a split folder already: handled by the recursive file walk
        kind = "gt" if _is_gt(folder.name) else "images"
        found.setdefault(split, {"images": [], "gt": []})[kind].append(folder)
    return found


def _files(folders: Iterable[Path], suffixes: set[str], skip_gt: bool = False) -> list[Path]:
    out = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            parts = [p.lower() for p in rel.parts[:-1]]
            if any(w in part for part in parts for w in _SKIP_WORDS) or path.name.startswith("."):
                continue
            if skip_gt and any(_is_gt(part) for part in parts):
                continue
            if path.is_file() and path.suffix.lower() in suffixes:
                out.append(path)
    return out


def _folder_label(path: Path) -> int | None:
    for part in reversed(path.parts[:-1]):
        key = _norm(part)
        if key in ("nonglaucoma", "normal", "healthy"):
            return 0
        if key == "glaucoma":
            return 1
    return None


class REFUGE:
    """Index of a REFUGE / REFUGE2 folder: ``items(split)`` -> `RefugeItem` list in file-name order."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataLayoutError("dataset folder not found", self.root)
        self.folders = _split_folders(self.root)
        if not self.folders:
            raise DataLayoutError(
                "no split folders (a folder name with 'train', 'val' or 'test', e.g. Training400, "
                "REFUGE-Validation400, REFUGE-Test400)",
                self.root,
            )
        self._cache: dict[str, list[RefugeItem]] = {}

    @property
    def splits(self) -> list[Split]:
        return [s for s in SPLITS if s in self.folders]

    def items(self, split: Split) -> list[RefugeItem]:
        if split not in self._cache:
            self._cache[split] = self._index(split)
        return self._cache[split]

    def _index(self, split: Split) -> list[RefugeItem]:
        folders = self.folders.get(split)
        if not folders:
            raise DataLayoutError(f"no '{split}' split folder", self.root)
        images = _files(folders["images"], IMAGE_SUFFIXES, skip_gt=True)
        if not images:
            raise DataLayoutError(f"no images (.jpg/.png/.tif) in the {split} split", folders["images"][0])
        masks: dict[str, Path] = {}
        for path in _files(folders["gt"] + folders["images"], {".bmp"}):
            if path.stem in masks:
                raise DataLayoutError(f"two masks for image {path.stem} ({masks[path.stem].name})", path)
            masks[path.stem] = path
        table: dict[str, dict[str, Any]] = {}
        for path in _files(folders["gt"] + folders["images"], TABLE_SUFFIXES):
            for stem, entry in parse_table(path).items():
                table.setdefault(stem, {}).update(entry)
        items, seen = [], {}
        for path in images:
            if path.stem in seen:
                raise DataLayoutError(f"two images named {path.stem} in the {split} split ({seen[path.stem]})", path)
            seen[path.stem] = path.name
            entry = table.get(path.stem, {})
            mask = masks.get(path.stem)
            label = entry.get("label")
            if label is None:
                label = _folder_label(path)
            if label is None and mask is not None:
                label = _folder_label(mask)
            items.append(RefugeItem(split, path.stem, path, mask, label, entry.get("fovea")))
        return items

    def camera(self, item: RefugeItem) -> str:
        return camera_for_size(*image_size(item.image_path))

    def split_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for split in self.splits:
            items = self.items(split)
            labels = Counter(
                "unknown" if i.label is None else ("glaucoma" if i.label else "non_glaucoma") for i in items
            )
            summary[split] = {
                "images": len(items),
                "masks": sum(i.mask_path is not None for i in items),
                "fovea": sum(i.fovea is not None for i in items),
                "labels": dict(sorted(labels.items())),
                "cameras": dict(sorted(Counter(self.camera(i) for i in items).items())),
            }
        return summary


def check_refuge_layout(root: str | Path, need: tuple[Split, ...] = ("train",)) -> REFUGE:
    """Raise `DataLayoutError` naming the first problem; return the index. Training needs labels and masks."""
    refuge = REFUGE(root)
    for split in need:
        items = refuge.items(split)
        missing_mask = next((i for i in items if i.mask_path is None), None)
        if missing_mask is not None:
            raise DataLayoutError(
                f"no disc/cup mask (.bmp named {missing_mask.name}) for this image", missing_mask.image_path
            )
        missing_label = next((i for i in items if i.label is None), None)
        if missing_label is not None:
            raise DataLayoutError(
                "no glaucoma label (a Glaucoma/Non-Glaucoma folder or a label column in a table)",
                missing_label.image_path,
            )
    return refuge
