"""DENTEX (MICCAI 2023 challenge) panoramic X-rays in their released layout, with FDI numbering by category name.

The release (Hugging Face ``ibrahimhamamci/DENTEX``; spec §3.2) unpacks to::

    DENTEX/
      training_data/quadrant/xrays/train_<n>.png                    + train_quadrant.json
      training_data/quadrant_enumeration/xrays/train_<n>.png        + train_quadrant_enumeration.json
      training_data/quadrant-enumeration-disease/xrays/train_<n>.png + train_quadrant_enumeration_disease.json
      training_data/unlabelled/xrays/                               (not used)
      validation_data/quadrant_enumeration_disease/xrays/val_<n>.png
      validation_triple.json                                        (validation labels, released after the challenge)

Four JSON flavours, all COCO-like with ``bbox`` = [x, y, w, h] in pixels:

* quadrant tier: flat ``categories`` / ``category_id`` whose id -> name map is shuffled (id 0 is quadrant "2");
* enumeration tier: ``categories_1`` (quadrant) and ``categories_2`` (tooth position) with ``category_id_1/2``;
* disease tier and ``validation_triple.json``: adds ``categories_3`` (diagnosis) and ``category_id_3``;
* the authors' converted files: all three ``categories_K`` in other orders, ``category_id_K`` = null where a level
  is not annotated.

Ids disagree between the flavours, so every label is mapped through its category **name** to medml's fixed class
order (`QUADRANTS`, `TEETH`, `DIAGNOSES`); a level a tier does not annotate is -1. File names (``train_<n>.png``) are
tier-local, and the same radiograph appears in several tiers under different names (spec §3.1: 95 of the 250 test
and 20 of the 50 validation images are byte-identical to quadrant/enumeration images): `find_cross_tier_duplicates`
finds them by content, `load_dentex(exclude_duplicates=True)` keeps each image only in its most evaluative tier.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medml.errors import DataLayoutError
from medml.io.image import image_size

LEVELS = ("quadrant", "enumeration", "diagnosis")
QUADRANTS = ("1", "2", "3", "4")  # FDI quadrant digit; index 0 = quadrant 1 (upper right, patient's side)
TEETH = ("1", "2", "3", "4", "5", "6", "7", "8")  # position in the quadrant: 1 central incisor ... 8 third molar
DIAGNOSES = ("Impacted", "Caries", "Periapical Lesion", "Deep Caries")  # the release's categories_3 id order
CLASS_NAMES: dict[str, tuple[str, ...]] = {"quadrant": QUADRANTS, "enumeration": TEETH, "diagnosis": DIAGNOSES}
NUM_CLASSES = (len(QUADRANTS), len(TEETH), len(DIAGNOSES))

TIERS = ("quadrant", "enumeration", "disease", "validation")
# Tier folder names under training_data/ (hyphens and underscores are both seen; compared after normalising).
TIER_FOLDERS = {
    "quadrant": "quadrant",
    "enumeration": "quadrant_enumeration",
    "disease": "quadrant-enumeration-disease",
}
TIER_JSON = {
    "quadrant": "train_quadrant.json",
    "enumeration": "train_quadrant_enumeration.json",
    "disease": "train_quadrant_enumeration_disease.json",
    "validation": "validation_triple.json",
}
# Which tier keeps an image that appears in several (evaluation images must not leak into pre-training tiers).
TIER_PRIORITY = ("validation", "disease", "enumeration", "quadrant")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_SKIP_PARTS = (".ipynb_checkpoints", "__MACOSX")  # junk folders inside the release zips


def fdi_code(quadrant_idx: int, tooth_idx: int) -> int:
    """FDI two-digit tooth code from 0-based class indices: (0, 0) -> 11, (3, 7) -> 48."""
    if not (0 <= int(quadrant_idx) < 4 and 0 <= int(tooth_idx) < 8):
        raise ValueError(f"quadrant index {quadrant_idx} / tooth index {tooth_idx} out of range (0..3 / 0..7)")
    return 10 * (int(quadrant_idx) + 1) + int(tooth_idx) + 1


def fdi_indices(code: int) -> tuple[int, int]:
    """0-based (quadrant, tooth) class indices of an FDI permanent-tooth code (11..48)."""
    quadrant, tooth = divmod(int(code), 10)
    if not (1 <= quadrant <= 4 and 1 <= tooth <= 8):
        raise ValueError(f"{code} is not an FDI permanent-tooth code (11..48)")
    return quadrant - 1, tooth - 1


def flip_quadrant_labels(labels: Any) -> Any:
    """Labels of a left-right mirrored panoramic: quadrants 1<->2 and 3<->4 swap (column 0 of (N, 3) labels, torch or
    numpy; -1 stays), tooth positions and diagnoses do not. The hook for `medml.transforms.detection.HorizontalFlip`."""
    out = labels.clone() if hasattr(labels, "clone") else np.array(labels, copy=True)
    quadrant = out[..., 0]
    flipped = quadrant ^ 1  # 0<->1, 2<->3
    out[..., 0] = flipped * (quadrant >= 0) + quadrant * (quadrant < 0)
    return out


@dataclass
class DentexImage:
    """One panoramic of a tier with its boxes; ``labels`` columns are (quadrant, tooth, diagnosis), -1 = not
    annotated at that level."""

    case_id: str  # "<tier>/<file stem>", unique across tiers
    image_path: Path
    width: int
    height: int
    tier: str  # "quadrant" | "enumeration" | "disease" | "validation"
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels
    labels: np.ndarray  # (N, 3) int64 columns quadrant, tooth, diagnosis; -1 where the tier lacks that level
    levels: tuple[str, ...] = ()  # the levels the tier's JSON annotates (a subset of LEVELS, in order)
    image_id: int | str = -1  # the JSON's image id (the challenge's submission and COCO results refer to it)
    file_name: str = ""  # the JSON's file_name
    dropped_boxes: int = 0  # boxes with zero or negative width/height, left out
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def level_mask(self) -> tuple[bool, bool, bool]:
        """Which of (quadrant, enumeration, diagnosis) this image's tier annotates (absent levels get no loss)."""
        return tuple(level in self.levels for level in LEVELS)  # type: ignore[return-value]

    def fdi_codes(self) -> np.ndarray:
        """(N,) FDI code per box, 0 where quadrant or tooth is not annotated."""
        q, t = self.labels[:, 0], self.labels[:, 1]
        return np.where((q >= 0) & (t >= 0), 10 * (q + 1) + t + 1, 0).astype(np.int64)


# ----- names ----------------------------------------------------------------------------------------------------------
def _norm_name(name: Any) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


_NAME_INDEX = {level: {_norm_name(n): i for i, n in enumerate(names)} for level, names in CLASS_NAMES.items()}


def class_index(level: str, name: Any) -> int | None:
    """medml's class index of a category name at a level ("2" -> 1 for quadrants, "deep caries" -> 3), or None."""
    key = _norm_name(name)
    if isinstance(name, float) and name.is_integer():
        key = str(int(name))
    return _NAME_INDEX[level].get(key)


# ----- layout ---------------------------------------------------------------------------------------------------------
def _norm_folder(name: str) -> str:
    return name.lower().replace("-", "_")


def _skip(path: Path) -> bool:
    return any(part in _SKIP_PARTS or part.startswith(".") for part in path.parts)


def training_root(root: Path) -> Path | None:
    """The folder holding the tier folders: ``root/training_data`` (also one level deeper, as some unzips nest), or
    ``root`` itself when the user points at training_data."""
    for candidate in (root / "training_data", root / "training_data" / "training_data", root):
        if candidate.is_dir() and any(
            _norm_folder(p.name) in {_norm_folder(f) for f in TIER_FOLDERS.values()}
            for p in candidate.iterdir()
            if p.is_dir()
        ):
            return candidate
    return None


def tier_folder(root: Path, tier: str) -> Path:
    """The folder of a training tier (``quadrant``, ``enumeration``, ``disease``)."""
    base = training_root(root)
    if base is None:
        raise DataLayoutError(
            "no DENTEX tier folders (training_data/quadrant, quadrant_enumeration, quadrant-enumeration-disease)", root
        )
    wanted = _norm_folder(TIER_FOLDERS[tier])
    for path in sorted(base.iterdir()):
        if path.is_dir() and _norm_folder(path.name) == wanted:
            return path
    raise DataLayoutError(f"no {TIER_FOLDERS[tier]}/ folder for the {tier} tier", base)


def tier_json(root: Path, tier: str) -> Path:
    """The annotation file of a tier: its release name, else the only ``*.json`` in the tier folder."""
    if tier == "validation":
        for candidate in (root / TIER_JSON["validation"], root / "validation_data" / TIER_JSON["validation"]):
            if candidate.is_file():
                return candidate
        found = [p for p in sorted(root.rglob(TIER_JSON["validation"])) if not _skip(p.relative_to(root))]
        if found:
            return found[0]
        raise DataLayoutError(f"no {TIER_JSON['validation']} (the validation labels)", root)
    folder = tier_folder(root, tier)
    if (folder / TIER_JSON[tier]).is_file():
        return folder / TIER_JSON[tier]
    jsons = [p for p in sorted(folder.glob("*.json")) if not p.name.startswith(".")]
    if len(jsons) == 1:
        return jsons[0]
    if not jsons:
        raise DataLayoutError(f"no annotation file ({TIER_JSON[tier]})", folder)
    raise DataLayoutError(f"several JSON files and none named {TIER_JSON[tier]}: {[p.name for p in jsons]}", folder)


def _image_index(folders: Iterable[Path]) -> dict[str, Path]:
    """File name -> path of every image under the folders (junk folders skipped; first one wins)."""
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and not _skip(path.relative_to(folder)) and path.is_file():
                index.setdefault(path.name, path)
    return index


def _image_folders(root: Path, tier: str, json_path: Path) -> list[Path]:
    if tier == "validation":
        folders = [p for p in (root / "validation_data", json_path.parent / "validation_data") if p.is_dir()]
        return folders or [json_path.parent]
    folder = json_path.parent
    return [folder / "xrays", folder] if (folder / "xrays").is_dir() else [folder]


# ----- JSON -----------------------------------------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataLayoutError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataLayoutError(f"cannot read the annotation file ({exc})", path) from None


def _category_maps(doc: Mapping[str, Any], path: Path) -> dict[int, tuple[str, dict[Any, int]]]:
    """Level number (1..3) -> (annotation key, {json category id: medml class index}) for the levels present."""
    maps: dict[int, tuple[str, dict[Any, int]]] = {}
    for k, level in enumerate(LEVELS, start=1):
        key = f"categories_{k}"
        if key not in doc and k == 1 and "categories" in doc:
            key = "categories"  # the quadrant tier's flat flavour
        if key not in doc:
            continue
        cats = doc[key]
        if not isinstance(cats, list):
            raise DataLayoutError(f"'{key}' is not a list of categories", path)
        mapping: dict[Any, int] = {}
        for cat in cats:
            if not isinstance(cat, Mapping) or "id" not in cat or "name" not in cat:
                raise DataLayoutError(f"a '{key}' entry without id and name: {cat!r}"[:200], path)
            index = class_index(level, cat["name"])
            if index is None:
                raise DataLayoutError(
                    f"unknown {level} category name {cat['name']!r} in '{key}' (expected one of "
                    f"{', '.join(CLASS_NAMES[level])})",
                    path,
                )
            mapping[cat["id"]] = index
            mapping[str(cat["id"])] = index  # ids written as strings by some converters
        id_key = "category_id" if key == "categories" else f"category_id_{k}"
        maps[k] = (id_key, mapping)
    if not maps:
        raise DataLayoutError("no categories (expected 'categories' or 'categories_1/2/3')", path)
    return maps


def _bbox(value: Any, where: str, path: Path) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DataLayoutError(f"{where}: bbox {value!r} is not [x, y, w, h]", path) from None
    if not all(np.isfinite((x, y, w, h))):
        raise DataLayoutError(f"{where}: bbox {value!r} is not finite", path)
    return x, y, w, h


def parse_dentex_json(
    doc: Mapping[str, Any], path: Path, tier: str, images: Mapping[str, Path], check_images: bool = True
) -> list[DentexImage]:
    """Images and boxes of one tier's JSON (already loaded), labels mapped by category name."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("images"), list):
        raise DataLayoutError("no 'images' list (not a COCO-style annotation file)", path)
    annotations = doc.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataLayoutError("'annotations' is not a list", path)
    maps = _category_maps(doc, path)
    levels = tuple(LEVELS[k - 1] for k in sorted(maps))
    per_image: dict[Any, list[Mapping[str, Any]]] = {}
    for n, ann in enumerate(annotations):
        if not isinstance(ann, Mapping) or "image_id" not in ann or "bbox" not in ann:
            raise DataLayoutError(f"annotation {n} has no image_id or bbox", path)
        per_image.setdefault(ann["image_id"], []).append(ann)
    out: list[DentexImage] = []
    seen: set[Any] = set()
    for entry in doc["images"]:
        if not isinstance(entry, Mapping) or "id" not in entry or "file_name" not in entry:
            raise DataLayoutError(f"an 'images' entry without id and file_name: {entry!r}"[:200], path)
        image_id, file_name = entry["id"], str(entry["file_name"])
        if image_id in seen:
            raise DataLayoutError(f"image id {image_id} listed twice", path)
        seen.add(image_id)
        name = Path(file_name).name
        image_path = images.get(name)
        if image_path is None:
            if check_images:
                raise DataLayoutError(f"image {name} (id {image_id}) not found next to the annotations", path)
            image_path = path.parent / "xrays" / name
        try:
            width, height = int(entry.get("width", 0)), int(entry.get("height", 0))
        except (TypeError, ValueError):
            raise DataLayoutError(f"image {name}: width/height are not integers", path) from None
        boxes, labels, dropped = [], [], 0
        for ann in per_image.pop(image_id, []):
            where = f"annotation {ann.get('id', '?')} of image {name}"
            x, y, w, h = _bbox(ann["bbox"], where, path)
            row = [-1, -1, -1]
            for k, (id_key, mapping) in maps.items():
                raw = ann.get(id_key)
                if raw is None:
                    continue  # the authors' converted files write null for levels they do not annotate
                if not isinstance(raw, int | str) or raw not in mapping:
                    raise DataLayoutError(f"{where}: {id_key} = {raw!r} is not a category id of that level", path)
                row[k - 1] = mapping[raw]
            if w <= 0 or h <= 0:
                dropped += 1
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(row)
        out.append(
            DentexImage(
                case_id=f"{tier}/{Path(name).stem}",
                image_path=image_path,
                width=width,
                height=height,
                tier=tier,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int64).reshape(-1, 3),
                levels=levels,
                image_id=image_id,
                file_name=file_name,
                dropped_boxes=dropped,
            )
        )
    if per_image:
        orphan = next(iter(per_image))
        raise DataLayoutError(f"annotations refer to image id {orphan!r}, which 'images' does not list", path)
    return out


def load_dentex_tier(root: str | Path, tier: str, *, check_sizes: bool = False) -> list[DentexImage]:
    """One tier of a DENTEX folder (``quadrant``, ``enumeration``, ``disease`` or ``validation``), in JSON order.

    Args:
        root: the DENTEX folder (holding ``training_data/`` and ``validation_triple.json``) or ``training_data``.
        tier: which tier.
        check_sizes: read each image header and refuse a size that differs from the JSON's width/height (the boxes
            would not fit the pixels); an image without width/height in the JSON gets its header's.
    """
    root = Path(root)
    if tier not in TIERS:
        raise DataLayoutError(f"unknown DENTEX tier {tier!r} (expected one of {', '.join(TIERS)})")
    if not root.is_dir():
        raise DataLayoutError("dataset folder not found", root)
    path = tier_json(root, tier)
    images = _image_index(_image_folders(root, tier, path))
    items = parse_dentex_json(read_json(path), path, tier, images)
    for item in items:
        if check_sizes or item.width <= 0 or item.height <= 0:
            width, height = image_size(item.image_path)
            if item.width > 0 and item.height > 0 and (width, height) != (item.width, item.height):
                raise DataLayoutError(
                    f"image is {width}x{height} but {path.name} says {item.width}x{item.height}", item.image_path
                )
            item.width, item.height = width, height
    return items


def available_tiers(root: str | Path) -> list[str]:
    """The tiers whose annotation file exists under ``root``."""
    root = Path(root)
    found = []
    for tier in TIERS:
        try:
            tier_json(root, tier)
        except DataLayoutError:
            continue
        found.append(tier)
    return found


def load_dentex(
    root: str | Path,
    *,
    tiers: Sequence[str] | None = None,
    exclude_duplicates: bool = False,
    check_sizes: bool = False,
) -> dict[str, list[DentexImage]]:
    """Every tier present under ``root`` (or the named ``tiers``, each required), keyed by tier name.

    With ``exclude_duplicates`` an image found (by content) in several tiers stays only in the first tier of
    `TIER_PRIORITY` (validation, disease, enumeration, quadrant), so evaluation images never reach pre-training.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError("dataset folder not found", root)
    wanted = list(tiers) if tiers is not None else available_tiers(root)
    if not wanted:
        raise DataLayoutError(
            "no DENTEX annotation files (training_data/<tier>/train_*.json or validation_triple.json)", root
        )
    data = {tier: load_dentex_tier(root, tier, check_sizes=check_sizes) for tier in wanted}
    if exclude_duplicates:
        data = drop_duplicates(data, find_cross_tier_duplicates(data))
    return data


# ----- duplicates -----------------------------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pixel_digest(path: Path) -> str:
    """SHA-256 of the decoded grey pixels and shape: equal for the same radiograph re-encoded (PNG vs JPEG-free
    re-saves, different metadata chunks)."""
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"))
    return hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()


def find_cross_tier_duplicates(
    data: Mapping[str, Sequence[DentexImage]], *, by: str = "bytes", within_tiers: bool = False
) -> list[dict[str, Any]]:
    """Groups of images with the same content found in more than one tier (or, with ``within_tiers``, twice in one).

    Args:
        data: tiers as `load_dentex` returns them.
        by: ``"bytes"`` (file SHA-256; only files whose byte size collides with another's are read, so a
            full release costs a fraction of a read-through) or ``"pixels"`` (decoded grey pixels; finds re-encoded
            copies, decodes every image).
        within_tiers: also report groups that stay inside one tier.

    Returns:
        ``[{"digest": ..., "tiers": [...], "images": [{"tier", "case_id", "path"}, ...]}, ...]``, sorted by digest.
    """
    items = [item for tier in data.values() for item in tier]
    if by == "bytes":
        by_size: dict[int, list[DentexImage]] = {}
        for item in items:
            by_size.setdefault(item.image_path.stat().st_size, []).append(item)
        candidates = [item for group in by_size.values() if len(group) > 1 for item in group]
        digest_of = file_digest
    elif by == "pixels":
        candidates, digest_of = items, pixel_digest
    else:
        raise ValueError(f"by must be 'bytes' or 'pixels', not {by!r}")
    digests: dict[Path, str] = {}
    groups: dict[str, list[DentexImage]] = {}
    for item in candidates:
        if item.image_path not in digests:
            digests[item.image_path] = digest_of(item.image_path)
        groups.setdefault(digests[item.image_path], []).append(item)
    out = []
    for digest, members in sorted(groups.items()):
        tiers = sorted({m.tier for m in members}, key=TIERS.index)
        if len(members) < 2 or (len(tiers) < 2 and not within_tiers):
            continue
        out.append(
            {
                "digest": digest,
                "tiers": tiers,
                "images": [{"tier": m.tier, "case_id": m.case_id, "path": str(m.image_path)} for m in members],
            }
        )
    return out


def drop_duplicates(
    data: Mapping[str, Sequence[DentexImage]], duplicates: Sequence[Mapping[str, Any]]
) -> dict[str, list[DentexImage]]:
    """Remove every copy of a duplicated image except the one in its highest-priority tier (`TIER_PRIORITY`)."""
    drop: set[str] = set()
    for group in duplicates:
        keep_tier = min(group["tiers"], key=TIER_PRIORITY.index)
        drop.update(m["case_id"] for m in group["images"] if m["tier"] != keep_tier)
    return {tier: [item for item in items if item.case_id not in drop] for tier, items in data.items()}


# ----- splits ---------------------------------------------------------------------------------------------------------
def _rank(seed: int, key: str) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def dentex_splits(
    images: Sequence[DentexImage], val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[DentexImage]]:
    """Deterministic train/val/test split of one tier by a seeded hash of each case id.

    The same seed and images give the same split in any order; ``round(n * fraction)`` images go to test, then
    to val (at least one each when the fraction is positive and there are images to spare). Lists keep the input
    order.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) with a sum below 1")
    n = len(images)
    ranked = sorted(range(n), key=lambda i: _rank(seed, images[i].case_id))

    def count(fraction: float) -> int:
        return 0 if fraction <= 0 or n < 3 else max(1, round(n * fraction))

    n_test = count(test_fraction)
    n_val = min(count(val_fraction), max(0, n - n_test - 1))
    test, val = set(ranked[:n_test]), set(ranked[n_test : n_test + n_val])
    return {
        "train": [im for i, im in enumerate(images) if i not in test and i not in val],
        "val": [im for i, im in enumerate(images) if i in val],
        "test": [im for i, im in enumerate(images) if i in test],
    }


def split_dentex(
    data: Mapping[str, Sequence[DentexImage]],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    external_test: bool = True,
) -> dict[str, dict[str, list[DentexImage]]]:
    """Splits of every tier: ``{tier: {"train", "val", "test"}}``.

    The quadrant and enumeration tiers are only trained on (their val split selects checkpoints). The disease tier
    (705 public images; the paper's split is 705 train / 50 val / 250 hidden test of 1,005) gives train/val, and
    with ``external_test`` its test split is the validation tier (``validation_triple.json``, 50 images), the
    public images with diagnosis labels outside training; otherwise ``test_fraction`` of the disease tier is held
    out instead.
    """
    out: dict[str, dict[str, list[DentexImage]]] = {}
    for tier, images in data.items():
        if tier == "validation":
            continue
        fraction = test_fraction if (tier == "disease" and not external_test) else 0.0
        out[tier] = dentex_splits(images, val_fraction, fraction, seed)
    if external_test and "disease" in out and "validation" in data:
        out["disease"]["test"] = list(data["validation"])
    return out


# ----- summary for `medml prepare` ------------------------------------------------------------------------------------
def tier_summary(images: Sequence[DentexImage]) -> dict[str, Any]:
    """Counts of one list of images: images, boxes, empty images, boxes per class at each annotated level."""
    levels = images[0].levels if images else ()
    labels = np.concatenate([im.labels for im in images]) if images else np.zeros((0, 3), np.int64)
    classes: dict[str, dict[str, int]] = {}
    for k, level in enumerate(LEVELS):
        if level not in levels:
            continue
        counts = Counter(int(v) for v in labels[:, k] if v >= 0)
        classes[level] = {name: counts.get(i, 0) for i, name in enumerate(CLASS_NAMES[level])}
        missing = int((labels[:, k] < 0).sum())
        if missing:
            classes[level]["(unlabelled)"] = missing
    sizes = Counter(f"{im.width}x{im.height}" for im in images)
    return {
        "images": len(images),
        "boxes": int(labels.shape[0]),
        "empty_images": sum(len(im.boxes) == 0 for im in images),
        "dropped_degenerate_boxes": sum(im.dropped_boxes for im in images),
        "levels": list(levels),
        "classes": classes,
        "distinct_sizes": len(sizes),
        "common_sizes": dict(sizes.most_common(5)),
    }


def dentex_summary(
    data: Mapping[str, Sequence[DentexImage]],
    *,
    duplicates: Sequence[Mapping[str, Any]] | None = None,
    splits: Mapping[str, Mapping[str, Sequence[DentexImage]]] | None = None,
) -> dict[str, Any]:
    """JSON-able report of a loaded DENTEX folder: per tier and split counts, class counts, duplicate groups."""
    summary: dict[str, Any] = {"tiers": {tier: tier_summary(items) for tier, items in data.items()}}
    if splits is not None:
        summary["splits"] = {
            tier: {split: tier_summary(items) for split, items in parts.items()} for tier, parts in splits.items()
        }
    if duplicates is not None:
        pairs = Counter(" & ".join(group["tiers"]) for group in duplicates)
        summary["duplicates"] = {
            "groups": len(duplicates),
            "images": sum(len(group["images"]) for group in duplicates),
            "by_tiers": dict(sorted(pairs.items())),
            "list": [
                {"tiers": group["tiers"], "case_ids": [m["case_id"] for m in group["images"]]} for group in duplicates
            ],
        }
    return summary


def prepare_dentex(
    root: str | Path,
    *,
    exclude_duplicates: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    external_test: bool = True,
) -> tuple[dict[str, list[DentexImage]], dict[str, Any]]:
    """Check a DENTEX folder strictly (image sizes against the JSON), find cross-tier duplicates and split it;
    return the tiers (duplicates excluded if asked) and the summary ``medml prepare dental`` writes."""
    data = load_dentex(root, check_sizes=True)
    duplicates = find_cross_tier_duplicates(data)
    if exclude_duplicates:
        data = drop_duplicates(data, duplicates)
    splits = split_dentex(
        data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, external_test=external_test
    )
    summary = dentex_summary(data, duplicates=duplicates, splits=splits)
    summary["root"] = str(Path(root))
    summary["duplicates_excluded"] = exclude_duplicates
    return data, summary


# ----- images ---------------------------------------------------------------------------------------------------------
def read_panoramic(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A panoramic as display-correct grey float32 in [0, 1] (HxW) and its metadata.

    PNG/JPEG (8- or 16-bit, grey or colour) and DICOM DX/PX/IO: the modality and VOI LUT (window or LUT sequence)
    are applied and MONOCHROME1 is inverted by `medml.io.read_image`, so bright means dense in every source. 8-bit
    data is divided by 255; anything else is scaled by its own range (a 16-bit PNG or a windowed DICOM rarely fills
    its nominal range).
    """
    from medml.io import read_image

    image = read_image(path, voi=True)
    if image.meta.get("mode") == "P":  # a palette image stores indices: read its colours instead
        image = read_image(path, rgb=True)
    array = np.asarray(image.array)
    if array.ndim == 3:
        array = array[..., :3].astype(np.float32).mean(axis=-1) if array.shape[-1] >= 3 else array[..., 0]
        array = array / 255.0 if np.asarray(image.array).dtype == np.uint8 else _minmax(array)
    elif array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = _minmax(array.astype(np.float32))
    return np.ascontiguousarray(array, np.float32), dict(image.meta)


def _minmax(array: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(array)), float(np.max(array))
    return ((array - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(array, np.float32)
