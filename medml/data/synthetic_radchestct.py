"""A tiny synthetic RAD-ChestCT in the public release's layout, for the tests and for trying the external evaluation.

The same analytic chests as the synthetic CT-RATE (`medml.data.synthetic_ctrate`), sampled on the release's array
axes (slices superior -> inferior, rows anterior -> posterior, columns right -> left) and stored as it stores them:
``<NoteAcc_DEID>.npz`` with one int16 array ``ct`` of HU clipped to [-1000, 1000], labels in
``img{train,valid,test}_Abnormality_and_Location_Labels.csv`` as ``abnormality*location`` columns. The release's
0.8 mm grid would make each volume ~450^3 voxels, so the spacing is a parameter (coarse by default); evaluate with
``data.radchest.spacing`` set to the same value.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medml.data.ctrate import LABELS
from medml.data.radchestct import CTRATE_TO_RADCHEST, LABEL_FILES, RELEASE_AXCODES
from medml.data.synthetic_ctrate import chest_hu, grid_points, random_chest, random_labels
from medml.transforms.ct import axcodes_directions
from medml.utils.files import atomic_path

PREFIX = {"train": "trn", "valid": "val", "test": "tst"}
#: Locations written for each abnormality (the release has 52); one is chosen per positive finding.
LOCATIONS = ("left_lung", "right_lung", "lung", "heart", "mediastinum", "other")
#: Abnormalities of the release with no CT-RATE counterpart, written as noise columns.
OTHER_ABNORMALITIES = ("mass", "cyst", "pneumothorax")


def label_columns() -> list[str]:
    names = sorted({n for v in CTRATE_TO_RADCHEST.values() if v for n in v} | set(OTHER_ABNORMALITIES))
    return [f"{n}*{loc}" for n in names for loc in LOCATIONS]


def write_npz(path: Path, hu_zyx: np.ndarray) -> None:
    """Store like the release: int16, HU clipped to [-1000, 1000], ``np.savez_compressed(..., ct=...)``."""
    array = np.rint(np.clip(hu_zyx, -1000, 1000)).astype(np.int16)
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(fh, ct=array)


def synthesize_radchestct(
    out_dir: str | Path,
    n_per_split: Sequence[int] = (0, 0, 24),
    shape: tuple[int, int, int] = (40, 48, 48),
    spacing: tuple[float, float, float] = (8.0, 7.5, 7.5),
    seed: int = 0,
    missing: int = 1,
) -> Path:
    """Write ``n_per_split`` (train, valid, test) volumes of ``shape`` (slices, rows, columns) at ``spacing`` mm into
    ``out_dir`` and their labels CSVs; ``missing`` extra label rows of the test CSV name volumes not shipped (as a
    partial download would). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "volumes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    columns = label_columns()
    # Array axes (slices, rows, columns) point I, P, L; grid_points wants the (x, y, z) = (columns, rows, slices) axes.
    direction = axcodes_directions(RELEASE_AXCODES)[::-1].T
    spacing_xyz = (spacing[2], spacing[1], spacing[0])
    points, _ = grid_points(shape, spacing_xyz, direction)
    for split, n in zip(("train", "valid", "test"), n_per_split):
        if not n:
            continue
        rows = []
        for k in range(1, n + 1 + (missing if split == "test" else 0)):
            name = f"{PREFIX[split]}{k:05d}"
            labels = random_labels(rng)
            row = dict.fromkeys(columns, 0)
            for j, label in enumerate(LABELS):
                names = CTRATE_TO_RADCHEST[label]
                if labels[j] and names:
                    row[f"{names[0]}*{LOCATIONS[rng.integers(len(LOCATIONS))]}"] = 1
            for other in OTHER_ABNORMALITIES:
                if rng.random() < 0.2:
                    row[f"{other}*{LOCATIONS[rng.integers(len(LOCATIONS))]}"] = 1
            rows.append([name, *row.values()])
            if k <= n:
                write_npz(out_dir / "volumes" / f"{name}.npz", chest_hu(points, random_chest(rng, labels), rng))
        path = out_dir / LABEL_FILES[split]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["NoteAcc_DEID", *columns])
            writer.writerows(rows)
    return out_dir
