"""A small synthetic CT-RATE in the official layout, with chest phantoms whose abnormalities are visible.

Each study is an analytic chest (body with subcutaneous fat, two lungs, heart in pericardial fat, aorta, trachea,
spine) in patient millimetres (LPS: +x left, +y posterior, +z superior), sampled on whatever grid is asked for:
the CT-RATE NIfTI grid here, an oblique DICOM grid for the clinical demo. Every one of the 18 labels adds its own
visible abnormality in a plausible place (effusion in the dependent lung base, nodules in the lungs, a larger heart,
darker lungs with bullae, ...). As in the real release, the NIfTI headers carry a wrong spacing (1 mm) and no
scaling; the metadata CSV holds the true spacing and the rescale slope/intercept of the stored values.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medml.data.ctrate import LABELS, SPLIT_FILES
from medml.utils.files import atomic_path

PREVALENCE = 0.5


@dataclass
class Chest:
    """Anatomy and abnormality parameters of one synthetic study (mm, LPS)."""

    labels: np.ndarray
    body: tuple[float, float] = (150.0, 105.0)
    heart_scale: float = 1.0
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spots: dict[str, list[tuple[float, ...]]] = field(default_factory=dict)


def random_chest(rng: np.random.Generator, labels: np.ndarray) -> Chest:
    chest = Chest(
        labels=np.asarray(labels, int),
        body=(rng.uniform(140, 160), rng.uniform(98, 112)),
        heart_scale=rng.uniform(1.3, 1.4) if labels[LABELS.index("Cardiomegaly")] else rng.uniform(0.9, 1.02),
        shift=(rng.uniform(-6, 6), rng.uniform(-6, 6), rng.uniform(-10, 10)),
    )
    # Sizes are chosen to be visible on the tiny recipe's 8 mm grid while staying plausible: 10-14 nodules of 2.5-3.2 cm
    # (metastases) in the lateral left mid-lung, lymph nodes of 4-5 cm in the hila and below the carina, a heavily
    # calcified coronary tree (calcium blooms on CT), a port whose metal throws streaks. Each finding keeps its own
    # region, so that the tiny model does not have to untangle overlapping ones: nodules stay clear of the hilum and
    # the upper-lobe bronchiectasis, the port's catheter ends in the superior vena cava above the heart and the sternal
    # wires' streaks spare the heart, so the coronary calcium is the only bright structure on the heart.
    chest.spots = {
        "nodule": [
            (rng.uniform(62, 100), rng.uniform(-45, 20), rng.uniform(15, 55), rng.uniform(13, 16))
            for _ in range(rng.integers(10, 15))
        ],
        "lymph": [
            (s * rng.uniform(34, 38), rng.uniform(-8, 4), rng.uniform(15, 25), rng.uniform(22, 26)) for s in (-1.0, 1.0)
        ]
        + [(rng.uniform(-4, 4), rng.uniform(12, 18), rng.uniform(18, 26), rng.uniform(16, 19))],
        "opacity": [(-rng.uniform(70, 80), rng.uniform(30, 40), rng.uniform(35, 45), 36.0)],
        "consolidation": [(rng.uniform(68, 78), rng.uniform(0, 10), rng.uniform(-55, -40), 40.0)],
        "atelectasis": [(-70.0, -35.0, rng.uniform(-40, -30), 30.0)],
        # (azimuth from, to; elevation from, to) on the heart surface, radians: LAD, circumflex, right coronary
        "coronary": [
            (-1.45 + rng.uniform(-0.1, 0.1), -1.3, 0.55, -0.55 + rng.uniform(-0.1, 0.1)),
            (-1.2, 0.5 + rng.uniform(-0.2, 0.2), 0.35, 0.3),
            (-1.9, -3.3 + rng.uniform(-0.2, 0.2), 0.3, -0.1),
        ],
        "port": [(-rng.uniform(60, 75), 0.0, rng.uniform(80, 95), 14.0)],
    }
    return chest


def _ellipsoid(p: np.ndarray, centre: Sequence[float], axes: Sequence[float]) -> np.ndarray:
    (cx, cy, cz), (ax, ay, az) = centre, axes
    return ((p[..., 0] - cx) / ax) ** 2 + ((p[..., 1] - cy) / ay) ** 2 + ((p[..., 2] - cz) / az) ** 2


def _near_curve(p: np.ndarray, curve: np.ndarray, radius: float) -> np.ndarray:
    """Points within ``radius`` mm of a polyline sampled densely (M, 3)."""
    lo, hi = curve.min(0) - radius, curve.max(0) + radius
    box = np.all((p >= lo) & (p <= hi), -1)  # only the curve's bounding box is searched
    near = np.zeros(p.shape[:-1], bool)
    q = p[box]
    d2 = np.full(len(q), np.inf, np.float32)
    for c in curve.astype(np.float32):
        d2 = np.minimum(d2, ((q - c) ** 2).sum(-1))
    near[box] = d2 < radius**2
    return near


def _cylinder_z(p: np.ndarray, x: float, y: float) -> np.ndarray:
    return np.sqrt((p[..., 0] - x) ** 2 + (p[..., 1] - y) ** 2)


def chest_hu(points: np.ndarray, chest: Chest, rng: np.random.Generator | None = None) -> np.ndarray:
    """Hounsfield units of ``chest`` at LPS ``points`` (..., 3) in mm; Gaussian noise (20 HU) if ``rng`` is given."""
    p = (points - np.asarray(chest.shift)).astype(np.float32)
    lab = {name: bool(v) for name, v in zip(LABELS, chest.labels)}
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    hu = np.full(p.shape[:-1], -1000.0)
    body = (x / chest.body[0]) ** 2 + (y / chest.body[1]) ** 2
    hu[body < 1.0] = -100.0  # subcutaneous fat
    hu[body < 0.8] = 35.0  # muscle and mediastinum
    hu[_ellipsoid(p, (0, -5, 40), (34, 40, 70)) < 1] = -90.0  # mediastinal fat (lungs are drawn over its sides)
    lung_l, lung_r = _ellipsoid(p, (72, 5, 20), (52, 70, 130)) < 1, _ellipsoid(p, (-72, 5, 20), (52, 70, 130)) < 1
    lung = lung_l | lung_r
    parenchyma = -975.0 if lab["Emphysema"] else -840.0
    hu[lung] = parenchyma
    if lab["Mosaic attenuation pattern"]:
        checker = (np.floor(x / 30) + np.floor(y / 30) + np.floor(z / 30)) % 2 == 0
        band = lung & (z > -20) & (z < 80) & (x < 0) & (y < 0)  # anterior: the posterior lung holds the opacity
        hu[band & checker] = -620.0
        hu[band & ~checker] = -930.0
    if lab["Interlobular septal thickening"]:
        rim = lung & (
            (_ellipsoid(p, (72, 5, 20), (36, 50, 100)) > 1) & (_ellipsoid(p, (-72, 5, 20), (36, 50, 100)) > 1)
        )
        rim &= np.abs(x) > 80
        # thickened septa outline secondary lobules (1-2.5 cm); on a coarse grid they read as a denser periphery
        hu[rim & ((np.abs(np.sin(y / 5.0)) < 0.5) | (np.abs(np.sin(z / 5.0)) < 0.5))] = -150.0
    if lab["Emphysema"]:
        for cx in (-70, 70):  # apical bullae
            for cy in (-10, 30):
                hu[_ellipsoid(p, (cx, cy, 112), (22, 22, 22)) < 1] = -1000.0
    if lab["Pulmonary fibrotic sequela"]:
        for cx in (45, 65, 85):
            for cz in (75, 95, 115):
                hu[lung & (_ellipsoid(p, (cx, 45, cz), (11, 30, 11)) < 1)] = -20.0
    if lab["Lung nodule"]:
        for cx, cy, cz, r in chest.spots["nodule"]:
            hu[lung & (_ellipsoid(p, (cx, cy, cz), (r, r, r)) < 1)] = 40.0
    if lab["Lung opacity"]:
        for cx, cy, cz, r in chest.spots["opacity"]:
            hu[lung & (_ellipsoid(p, (cx, cy, cz), (r, r, r)) < 1)] = -450.0
    if lab["Consolidation"]:
        for cx, cy, cz, r in chest.spots["consolidation"]:
            hu[lung & (_ellipsoid(p, (cx, cy, cz), (r, r * 0.9, r * 1.2)) < 1)] = 30.0
    if lab["Atelectasis"]:
        for cx, cy, cz, r in chest.spots["atelectasis"]:
            hu[lung & (_ellipsoid(p, (cx, cy, cz), (r * 1.5, r, r)) < 1)] = 25.0
    if lab["Pleural effusion"]:
        hu[lung & (y > 35) & (z < 10)] = 10.0
    airway = -1000.0
    if lab["Peribronchial thickening"]:
        for cx in (-40, -65):
            tube = (_cylinder_z(p, cx, 10) < 14) & (z > -95) & (z < -15)
            hu[tube] = 40.0
            hu[tube & (_cylinder_z(p, cx, 10) < 4)] = airway
    if lab["Bronchiectasis"]:
        for cx in (-55, 55):
            tube = (_cylinder_z(p, cx, -5) < 22) & (z > 70) & (z < 130)
            hu[tube] = 40.0
            hu[tube & (_cylinder_z(p, cx, -5) < 12)] = airway
    # Mediastinum: heart in pericardial fat, aorta, trachea, spine (drawn over the lungs where they meet).
    hs = chest.heart_scale
    heart_c, heart_a = (15.0, -25.0, -50.0), np.array([50.0, 42.0, 46.0]) * hs
    if lab["Pericardial effusion"]:
        # a 2.5 cm band of fluid, thickest where it is dependent (posterior), inside a thin rim of epicardial fat
        hu[_ellipsoid(p, (heart_c[0], heart_c[1] + 6.0, heart_c[2]), heart_a + 25.0) < 1] = 10.0
        hu[_ellipsoid(p, heart_c, heart_a * 1.12) < 1] = -90.0
    else:
        hu[_ellipsoid(p, heart_c, heart_a * 1.15) < 1] = -90.0
    hu[_ellipsoid(p, heart_c, heart_a) < 1] = 40.0
    if lab["Coronary artery wall calcification"]:
        for az0, az1, el0, el1 in chest.spots["coronary"]:
            # a calcified arc along the artery in the epicardial fat (LAD, circumflex, RCA)
            t = np.linspace(0.0, 1.0, 24)
            az, el = az0 + t * (az1 - az0), el0 + t * (el1 - el0)
            unit = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
            curve = np.asarray(heart_c) + 1.1 * heart_a * unit
            hu[_near_curve(p, curve, 10.0)] = 1100.0  # dense calcium blooms well beyond the vessel wall
    aorta = _cylinder_z(p, 25, 50)
    if lab["Arterial wall calcification"]:
        hu[(aorta < 22) & (z > -120)] = 700.0
        hu[_ellipsoid(p, (-15, -20, 70), (22, 22, 68)) < 1] = 700.0
    hu[(aorta < 14) & (z > -120)] = 40.0
    arch = _ellipsoid(p, (-15, -20, 70), (14, 14, 60)) < 1
    hu[arch] = 40.0
    hu[(_cylinder_z(p, 0, -5) < 9) & (z > 40)] = -1000.0  # trachea
    hu[_cylinder_z(p, 0, 82) < 17] = 400.0  # vertebral bodies
    if lab["Lymphadenopathy"]:
        for cx, cy, cz, r in chest.spots["lymph"]:
            hu[_ellipsoid(p, (cx, cy, cz), (r, r, r)) < 1] = 45.0
    if lab["Hiatal hernia"]:
        hh = _ellipsoid(p, (8, 38, -105), (35, 28, 30)) < 1
        hu[hh] = -900.0
        hu[hh & (y > 42)] = 10.0
    if lab["Medical material"]:
        for cx, _, cz, r in chest.spots["port"]:
            # port: reservoir in the anterior chest-wall fat, catheter along the chest wall and through the upper
            # mediastinum (never across the lung) into the superior vena cava, its tip above the heart; dark streaks
            # radiate from the reservoir (high above the heart)
            wall_y = -chest.body[1] * np.sqrt(max(0.88 - (cx / chest.body[0]) ** 2, 0.05))
            angle = np.arctan2(y - wall_y, x - cx)
            streak = (np.abs(z - cz) < r) & (np.hypot(x - cx, y - wall_y) < 110) & (body < 1.0) & ~lung
            hu[streak & (np.cos(6 * angle) > 0.6)] -= 500.0
            hu[_ellipsoid(p, (cx, wall_y, cz), (r * 1.6, r * 0.6, r * 1.4)) < 1] = 2500.0
            t = np.linspace(0.0, 1.0, 12)[:, None]
            knots = [
                np.array(k) for k in ((cx, wall_y, cz), (-25.0, -72.0, cz), (-18.0, -20.0, cz - 10), (-15, -15, 35))
            ]
            lead = np.concatenate([(1 - t) * k0 + t * k1 for k0, k1 in zip(knots, knots[1:])])
            hu[_near_curve(p, lead, 4.0)] = 2500.0
        # sternotomy wires (after cardiac surgery) all along the sternum, each with its own streaks, which spare the
        # heart and its pericardium (where the coronary calcium is)
        sternum_y = -chest.body[1] * 0.84
        spared = _ellipsoid(p, heart_c, heart_a + 30.0) < 1
        for wz in range(-70, 100, 34):
            angle = np.arctan2(y - sternum_y, x)
            streak = (np.abs(z - wz) < 8) & (np.hypot(x, y - sternum_y) < 90) & (body < 1.0) & ~lung & ~spared
            hu[streak & (np.cos(6 * angle) > 0.6)] -= 500.0
            hu[_ellipsoid(p, (0.0, sternum_y, wz), (16.0, 7.0, 5.0)) < 1] = 2500.0
    hu[body >= 1.0] = -1000.0
    if rng is not None:
        hu = hu + rng.normal(0.0, 20.0, hu.shape)
    return hu


def grid_points(
    shape_zyx: Sequence[int],
    spacing_xyz: Sequence[float],
    direction: np.ndarray | None = None,
    origin: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """LPS points (z, y, x, 3) of a grid centred on 0 (or starting at ``origin``), and the origin used."""
    nz, ny, nx = shape_zyx
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    steps = direction @ np.diag(spacing_xyz)
    if origin is None:
        origin = -steps @ (np.array([nx, ny, nz], float) - 1) / 2
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], -1).astype(float)
    return np.asarray(origin, float) + idx @ steps.T, np.asarray(origin, float)


def _write_nifti(path: Path, stored: np.ndarray) -> None:
    """(z, y, x) stored values as NIfTI with the release's untrustworthy header: 1 mm spacing, no scaling."""
    import nibabel as nib

    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-aligned axes (x->L, y->P, z->S) in RAS terms, spacing wrong
    img = nib.Nifti1Image(np.ascontiguousarray(stored.transpose(2, 1, 0)), affine)
    img.header.set_slope_inter(np.nan, np.nan)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def random_labels(rng: np.random.Generator, prevalence: float = PREVALENCE) -> np.ndarray:
    return (rng.random(len(LABELS)) < prevalence).astype(int)


def synthesize_ctrate(
    out_dir: str | Path,
    n_train_patients: int = 130,
    n_valid_patients: int = 40,
    shape: tuple[int, int, int] = (40, 64, 64),
    seed: int = 0,
) -> Path:
    """Write ``out_dir/dataset/...`` in the CT-RATE layout; return ``out_dir``.

    Patients have one or two scans (``a``, ``b``), scans one or two reconstructions (the same anatomy with another
    noise draw and another rescale intercept). ``shape`` is (z, y, x) voxels; in-plane spacing ~5.4 mm and slice
    spacing ~8 mm cover a 345 x 345 x 320 mm chest.
    """
    out_dir = Path(out_dir)
    root = out_dir / "dataset"
    rng = np.random.default_rng(seed)
    label_header = ["VolumeName", *LABELS]
    meta_header = [
        "VolumeName",
        "Manufacturer",
        "RescaleSlope",
        "RescaleIntercept",
        "XYSpacing",
        "ZSpacing",
        "Rows",
        "Columns",
    ]
    for split, n_patients in (("train", n_train_patients), ("valid", n_valid_patients)):
        label_rows, meta_rows, report_rows = [], [], []
        for pid in range(1, n_patients + 1):
            for scan in "ab"[: 1 + (rng.random() < 0.1)]:
                labels = random_labels(rng)
                chest = random_chest(rng, labels)
                sx = sy = rng.uniform(5.2, 5.6)
                sz = rng.uniform(7.5, 8.5)
                nz = int(round(shape[0] * 8.0 / sz))
                points, _ = grid_points((nz, shape[1], shape[2]), (sx, sy, sz))
                clean = chest_hu(points, chest)
                for recon in range(1, 2 + (rng.random() < 0.15)):
                    name = f"{split}_{pid}_{scan}_{recon}.nii.gz"
                    hu = clean + rng.normal(0.0, 20.0, clean.shape)
                    slope, intercept = (1.0, -1024.0) if (pid + recon) % 2 else (1.0, -8192.0)
                    stored = np.clip(np.round((hu - intercept) / slope), -32768, 32767).astype(np.int16)
                    folder = root / split / f"{split}_{pid}" / f"{split}_{pid}_{scan}"
                    folder.mkdir(parents=True, exist_ok=True)
                    _write_nifti(folder / name, stored)
                    label_rows.append([name, *labels.tolist()])
                    meta_rows.append(
                        [name, "SYNTHETIC", slope, intercept, f"[{sx:.4f}, {sy:.4f}]", f"{sz:.4f}", shape[1], shape[2]]
                    )
                    findings = ", ".join(n.lower() for n, v in zip(LABELS, labels) if v) or "no abnormality"
                    report_rows.append([name, f"Synthetic chest CT: {findings}.", findings])
        labels_csv, meta_csv = SPLIT_FILES[split]
        _write_csv(root / labels_csv, label_header, label_rows)
        _write_csv(root / meta_csv, meta_header, meta_rows)
        reports = f"radiology_text_reports/{'train' if split == 'train' else 'validation'}_reports.csv"
        _write_csv(root / reports, ["VolumeName", "Findings_EN", "Impressions_EN"], report_rows)
    return out_dir
