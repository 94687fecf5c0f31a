"""Synthetic DENTEX: panoramic X-rays in the release's layout and JSON flavours, and clinical files for ``predict``.

Each panoramic shows two arches of up to 32 teeth along a smile-shaped occlusal plane (the patient's right on the
viewer's left, so quadrant 1 is upper left on screen, 2 upper right, 3 lower right, 4 lower left), incisors narrow and
molars wide with two roots, in a brighter jaw band over a dark background. Abnormal teeth carry what the radiologist
looks for: caries as a dark spot in the crown, deep caries as a larger spot reaching the pulp, a periapical lesion as
a dark round area at the root apex, an impacted third molar tilted and sunk below the occlusal plane. Some teeth are
missing (third molars most often). Boxes are the drawn teeth's extents, so they follow the pixels.

The tiers get the release's annotation flavours (`medml.data.dentex`): the quadrant tier its flat, shuffled-id
``categories``; the enumeration tier ``categories_1/2`` (quadrant names written as integers, as a third-party audit
reports for that file); the disease tier and ``validation_triple.json`` all three levels, abnormal teeth only,
sometimes one tooth twice with two diagnoses. A few radiographs are copied byte-identically into other tiers under
other names, as in the release, and a Jupyter checkpoint folder sits among the validation images.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medml.data.dentex import DIAGNOSES, QUADRANTS, TEETH, TIER_FOLDERS, TIER_JSON
from medml.io.synthetic import _base_dataset
from medml.utils.files import atomic_path

DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
IO_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.3"  # Digital Intra-Oral X-Ray Image Storage - For Presentation
# Relative tooth widths by position 1..8 (incisors, canine, premolars, molars).
TOOTH_WIDTHS = (0.8, 0.75, 0.9, 0.95, 0.95, 1.3, 1.25, 1.2)
# The quadrant tier's shuffled id -> name map (spec §2.8): id 0 is quadrant "2".
QUADRANT_TIER_CATEGORIES = ((0, "2"), (1, "1"), (2, "3"), (3, "4"))
IMPACTED, CARIES, PERIAPICAL, DEEP_CARIES = (DIAGNOSES.index(n) for n in DIAGNOSES)


@dataclass
class Tooth:
    quadrant: int  # 0..3
    position: int  # 0..7
    box: tuple[float, float, float, float]  # xyxy pixels
    diagnoses: list[int] = field(default_factory=list)


@dataclass
class Panoramic:
    image: np.ndarray  # HxW uint8
    teeth: list[Tooth]
    quadrant_boxes: dict[int, tuple[float, float, float, float]]

    @property
    def abnormal(self) -> list[tuple[Tooth, int]]:
        """(tooth, diagnosis) per annotation row of the disease flavour (a tooth with two diagnoses twice)."""
        return [(t, d) for t in self.teeth for d in t.diagnoses]


def _rotate(points: np.ndarray, centre: tuple[float, float], angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - centre) @ rot.T + centre


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _fill(layer: np.ndarray, pts: np.ndarray, value: float, mode: str = "max") -> None:
    mask = np.zeros(layer.shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    m = mask.astype(bool)
    if mode == "max":
        layer[m] = np.maximum(layer[m], value)
    elif mode == "set":
        layer[m] = value
    else:  # "mul": darken
        layer[m] *= value


def draw_panoramic(
    rng: np.random.Generator,
    height: int = 256,
    width: int = 512,
    *,
    n_abnormal: int | None = None,
    impacted_p: float = 0.15,
    missing_p: float = 0.05,
) -> Panoramic:
    """One synthetic panoramic with its teeth, diagnoses and quadrant boxes (all in pixels of this image).

    Args:
        rng: random generator.
        height, width: image size.
        n_abnormal: abnormal teeth besides impacted molars (random 0..4 by default).
        impacted_p: chance that a present third molar is impacted.
        missing_p: chance that a tooth (other than a third molar, which is missing 3x as often) is missing.
    """
    h, w = float(height), float(width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = w / 2 + rng.normal(0, 0.02 * w)
    y0 = h * (0.5 + rng.normal(0, 0.025))
    curve = h * rng.uniform(0.04, 0.09)
    half = w * rng.uniform(0.37, 0.43)  # half the dentition's width
    unit = half / (sum(TOOTH_WIDTHS) + 0.1 * len(TOOTH_WIDTHS))
    crown_h = h * rng.uniform(0.1, 0.12)
    root_h = h * rng.uniform(0.17, 0.21)

    def occlusal(x: float) -> float:
        return y0 - curve * ((x - cx) / half) ** 2

    # background: dark skull, brighter jaw band around the occlusal curve, ramus shadows at the sides
    band = np.exp(-(((yy - (y0 - curve * ((xx - cx) / half) ** 2)) / (0.32 * h)) ** 2))
    image = 0.12 + 0.25 * band * np.exp(-(((xx - cx) / (0.55 * w)) ** 6))
    for side in (-1, 1):
        image += 0.08 * np.exp(-(((xx - (cx + side * 0.47 * w)) / (0.04 * w)) ** 2)) * (yy < y0 + 0.1 * h)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), max(1.0, 0.01 * w))
    image = image + 0.04 * texture / (np.abs(texture).max() + 1e-6)
    teeth_layer = np.zeros((height, width), np.float32)
    dark = np.ones((height, width), np.float32)  # multiplicative radiolucencies (caries, lesions)

    teeth: list[Tooth] = []
    geometry: list[dict[str, Any]] = []  # drawing geometry of each tooth, for its lesions
    k = rng.integers(0, 5) if n_abnormal is None else n_abnormal
    for q in range(4):
        upper = q in (0, 1)
        direction = -1.0 if q in (0, 3) else 1.0  # on screen: quadrants 1 and 4 left of the midline
        x = cx + direction * 0.05 * unit
        for p in range(8):
            tw = TOOTH_WIDTHS[p] * unit * rng.uniform(0.95, 1.05)
            tcx = x + direction * tw / 2
            x += direction * (tw + 0.1 * unit)
            missing = rng.random() < (3 * missing_p if p == 7 else missing_p)
            if missing:
                continue
            impacted = p == 7 and rng.random() < impacted_p
            sign = -1.0 if upper else 1.0  # roots go up in the upper arch, down in the lower
            gap = 0.015 * h
            base = occlusal(tcx)
            cy0 = base + sign * gap  # occlusal surface of the crown
            angle = 0.0
            if impacted:
                cy0 += sign * crown_h * rng.uniform(0.5, 0.9)  # sunk into the bone
                angle = direction * rng.uniform(35, 65) * (-sign)
            centre = (tcx, cy0 + sign * (crown_h + root_h) / 2)
            cw = tw * 0.92
            crown = _ellipse(tcx, cy0 + sign * crown_h / 2, cw / 2, crown_h / 2 * 1.05)
            pulp = _ellipse(tcx, cy0 + sign * crown_h * 0.62, cw * 0.16, crown_h * 0.22)
            roots = []
            n_roots = 2 if p >= 5 else 1
            for r in range(n_roots):
                off = 0.0 if n_roots == 1 else (r - 0.5) * cw * 0.45
                top = cy0 + sign * crown_h * 0.85
                apex = cy0 + sign * (crown_h + root_h)
                rw = cw * (0.42 if n_roots == 1 else 0.3)
                roots.append(
                    np.array(
                        [
                            [tcx + off - rw / 2, top],
                            [tcx + off + rw / 2, top],
                            [tcx + off + rw * 0.12, apex],
                            [tcx + off - rw * 0.12, apex],
                        ]
                    )
                )
            shapes = [crown, *roots]
            if angle:
                shapes = [_rotate(s, centre, angle) for s in shapes]
                pulp = _rotate(pulp, centre, angle)
            intensity = rng.uniform(0.75, 0.9)
            for root in shapes[1:]:
                _fill(teeth_layer, root, intensity * 0.8)
            _fill(teeth_layer, shapes[0], intensity)
            _fill(teeth_layer, pulp, intensity * 0.55, mode="set")
            pts = np.concatenate(shapes)
            box = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
            tooth = Tooth(q, p, tuple(box))  # type: ignore[arg-type]
            if impacted:
                tooth.diagnoses.append(IMPACTED)
            geometry.append({"centre": centre, "angle": angle, "cy0": cy0, "sign": sign, "cw": cw})
            teeth.append(tooth)

    candidates = [t for t in teeth if not t.diagnoses]
    for tooth in rng.permutation(np.array(candidates, dtype=object))[: int(k)] if candidates else []:
        d = int(rng.choice([CARIES, DEEP_CARIES, PERIAPICAL], p=[0.45, 0.25, 0.3]))
        tooth.diagnoses.append(d)
        if d == DEEP_CARIES and rng.random() < 0.4:
            tooth.diagnoses.append(PERIAPICAL)  # one tooth, two rows with the same box (as in the release)
    for tooth, e in zip(teeth, geometry, strict=True):
        tcx, sign, cw, cy0 = e["centre"][0], e["sign"], e["cw"], e["cy0"]
        side = rng.choice([-1.0, 1.0])
        box = list(tooth.box)
        for d in tooth.diagnoses:
            if d == CARIES:
                spot = _ellipse(tcx + side * cw * 0.18, cy0 + sign * crown_h * 0.3, cw * 0.24, crown_h * 0.24)
                _fill(dark, _rotate(spot, e["centre"], e["angle"]), 0.3, mode="mul")
            elif d == DEEP_CARIES:
                spot = _ellipse(tcx + side * cw * 0.1, cy0 + sign * crown_h * 0.45, cw * 0.34, crown_h * 0.38)
                _fill(dark, _rotate(spot, e["centre"], e["angle"]), 0.15, mode="mul")
            elif d == PERIAPICAL:
                apex = cy0 + sign * (crown_h + root_h)
                r = max(cw * 0.45, 2.0)
                lesion = _ellipse(tcx, apex, r, r * 0.9)
                _fill(dark, lesion, 0.35, mode="mul")
                box = [min(box[0], tcx - r), min(box[1], apex - r), max(box[2], tcx + r), max(box[3], apex + r)]
        tooth.box = (
            float(np.clip(box[0], 0, w - 1)),
            float(np.clip(box[1], 0, h - 1)),
            float(np.clip(box[2], 1, w)),
            float(np.clip(box[3], 1, h)),
        )

    teeth_layer = cv2.GaussianBlur(teeth_layer, (0, 0), 0.7)
    dark = cv2.GaussianBlur(dark, (0, 0), 0.8)
    image = np.maximum(image, teeth_layer) * dark
    image = image + rng.normal(0, 0.02, image.shape)
    pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
    quadrant_boxes = {}
    for q in range(4):
        boxes = np.array([t.box for t in teeth if t.quadrant == q]).reshape(-1, 4)
        if len(boxes):
            quadrant_boxes[q] = (
                float(boxes[:, 0].min()),
                float(boxes[:, 1].min()),
                float(boxes[:, 2].max()),
                float(boxes[:, 3].max()),
            )
    return Panoramic(pixels, teeth, quadrant_boxes)


# ----- release layout -------------------------------------------------------------------------------------------------
def _coco_box(box: tuple[float, float, float, float]) -> dict[str, Any]:
    x1, y1, x2, y2 = (round(float(v), 1) for v in box)
    return {
        "bbox": [x1, y1, round(x2 - x1, 1), round(y2 - y1, 1)],
        "area": round((x2 - x1) * (y2 - y1), 1),
        "iscrowd": 0,
        "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
    }


def _annotations(pano: Panoramic, flavour: str, image_id: int, start: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if flavour == "quadrant":
        ids = {int(name) - 1: cid for cid, name in QUADRANT_TIER_CATEGORIES}
        for q, box in sorted(pano.quadrant_boxes.items()):
            rows.append({"image_id": image_id, "category_id": ids[q], **_coco_box(box)})
    elif flavour == "enumeration":
        for t in pano.teeth:
            rows.append(
                {"image_id": image_id, "category_id_1": t.quadrant, "category_id_2": t.position, **_coco_box(t.box)}
            )
    else:
        for t, d in pano.abnormal:
            rows.append(
                {
                    "image_id": image_id,
                    "category_id_1": t.quadrant,
                    "category_id_2": t.position,
                    "category_id_3": d,
                    **_coco_box(t.box),
                }
            )
    for n, row in enumerate(rows):
        row["id"] = start + n
    return rows


def _categories(flavour: str) -> dict[str, Any]:
    if flavour == "quadrant":
        return {
            "categories": [
                {"id": cid, "name": name, "supercategory": "Quadrant"} for cid, name in QUADRANT_TIER_CATEGORIES
            ]
        }
    cats: dict[str, Any] = {
        # integer names in the enumeration tier (a third-party audit reports them so); strings elsewhere
        "categories_1": [
            {"id": i, "name": int(n) if flavour == "enumeration" else n, "supercategory": "Quadrant"}
            for i, n in enumerate(QUADRANTS)
        ],
        "categories_2": [{"id": i, "name": n, "supercategory": "Enumeration"} for i, n in enumerate(TEETH)],
    }
    if flavour == "disease":
        cats["categories_3"] = [{"id": i, "name": n, "supercategory": "Diagnosis"} for i, n in enumerate(DIAGNOSES)]
    return cats


def _write_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def _write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc))


def write_synthetic_dentex(
    out: str | Path,
    *,
    n_per_tier: tuple[int, int, int] = (16, 16, 48),
    n_validation: int = 16,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    n_unlabelled: int = 2,
) -> Path:
    """Write a DENTEX folder (``training_data/`` tiers, ``validation_data/``, ``validation_triple.json``).

    Args:
        out: the DENTEX root to create.
        n_per_tier: images in the quadrant, enumeration and disease tiers. When the tiers are large enough, the
            last two quadrant images and the last enumeration image are byte-identical copies of disease and
            validation images (cross-tier duplicates under other file names, as in the release).
        n_validation: images in the validation tier.
        size: (height, width); widths vary by up to 1/16 between images, as real panoramics do.
        seed: random seed.
        n_unlabelled: images in ``training_data/unlabelled/xrays`` (not annotated; ignored by the loader).

    Returns:
        ``out``.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    height, width = size
    n_quadrant, n_enumeration, n_disease = n_per_tier

    def scene() -> Panoramic:
        w = width - int(rng.integers(0, 2)) * (width // 16)
        return draw_panoramic(rng, height, w)

    disease = [scene() for _ in range(n_disease)]
    validation = [scene() for _ in range(n_validation)]
    quadrant = [scene() for _ in range(n_quadrant)]
    enumeration = [scene() for _ in range(n_enumeration)]
    copies: dict[tuple[str, int], tuple[str, int]] = {}  # (tier, index) -> (source tier, index)
    if n_quadrant >= 4 and n_disease >= 2:
        copies[("quadrant", n_quadrant - 1)] = ("disease", 0)
        copies[("quadrant", n_quadrant - 2)] = ("disease", 1)
    if n_enumeration >= 4 and n_validation >= 1:
        copies[("enumeration", n_enumeration - 1)] = ("validation", 0)
    if n_enumeration >= 4 and n_disease >= 1:
        copies[("enumeration", n_enumeration - 2)] = ("disease", 0)
    scenes = {"quadrant": quadrant, "enumeration": enumeration, "disease": disease, "validation": validation}
    for (tier, i), (src, j) in copies.items():
        scenes[tier][i] = scenes[src][j]

    train = out / "training_data"
    folders = {tier: train / TIER_FOLDERS[tier] for tier in ("quadrant", "enumeration", "disease")}
    folders["validation"] = out / "validation_data" / "quadrant_enumeration_disease"
    written: dict[tuple[str, int], Path] = {}
    for tier in ("disease", "validation", "quadrant", "enumeration"):  # sources of copies first
        flavour = "disease" if tier == "validation" else tier
        prefix = "val" if tier == "validation" else "train"
        images, annotations = [], []
        for i, pano in enumerate(scenes[tier]):
            name = f"{prefix}_{i}.png"
            path = folders[tier] / "xrays" / name
            if (tier, i) in copies:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(written[copies[(tier, i)]], path)
            else:
                _write_png(pano.image, path)
            written[(tier, i)] = path
            height_i, width_i = pano.image.shape
            images.append({"id": i + 1, "file_name": name, "height": height_i, "width": width_i})
            annotations += _annotations(pano, flavour, i + 1, len(annotations) + 1)
        doc = {"images": images, "annotations": annotations, **_categories(flavour)}
        json_path = out / TIER_JSON["validation"] if tier == "validation" else folders[tier] / TIER_JSON[tier]
        _write_json(doc, json_path)
    # junk the release zips carry: a Jupyter checkpoint copy among the validation images
    if n_validation:
        junk = folders["validation"] / "xrays" / ".ipynb_checkpoints" / "val_0-checkpoint.png"
        junk.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written[("validation", 0)], junk)
    for i in range(n_unlabelled):
        _write_png(scene().image, train / "unlabelled" / "xrays" / f"train_{i}.png")
    return out


# ----- clinical files for `medml predict` -----------------------------------------------------------------------------
def _dx_dataset(sop_class: str, modality: str, rows: int, cols: int) -> Dataset:
    ds = _base_dataset(sop_class, modality, generate_uid(), generate_uid(), generate_uid())
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PatientOrientation = ["R", "H"]
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.DetectorType = "SCINTILLATOR"
    ds.KVP = 70
    ds.ImageLaterality = "U"
    ds.AcquisitionDateTime = "20240102120000"
    ds.AcquisitionContextSequence = []
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "91609006", "SCT", "Jaw region"
    ds.AnatomicRegionSequence = [region]
    if modality == "IO":
        ds.PositionerType = "NONE"
        ds.ImageLaterality = "B"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_panoramic_dicom(
    path: str | Path,
    image: np.ndarray,
    *,
    modality: str = "PX",
    monochrome1: bool = False,
    bits: int = 12,
    voi: str = "window",
) -> Path:
    """A panoramic (HxW, float in [0, 1], bright = dense) as a DICOM DX/PX (DX For Presentation) or IO
    (Intra-Oral For Presentation) image.

    Args:
        path: output file.
        image: display intensities in [0, 1].
        modality: ``"DX"``, ``"PX"`` (panoramic, stored in the DX IOD) or ``"IO"`` (intra-oral IOD).
        monochrome1: store inverted (MONOCHROME1, PresentationLUTShape INVERSE), as many X-ray units do.
        bits: BitsStored: 8 (8-bit allocated), 12 or 16 (16-bit allocated).
        voi: ``"window"`` (WindowCenter/Width), ``"lut"`` (a non-linear VOILUTSequence) or ``"none"``.
    """
    image = np.clip(np.asarray(image, np.float64), 0, 1)
    rows, cols = image.shape
    sop_class = IO_PRESENTATION_STORAGE if modality == "IO" else DX_PRESENTATION_STORAGE
    ds = _dx_dataset(sop_class, modality, rows, cols)
    top = 2**bits - 1
    # Stored values use 5..95 % of the range (a detector rarely fills it); MONOCHROME1 stores dense as low.
    stored = np.round((0.05 + 0.9 * (1 - image if monochrome1 else image)) * top)
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    if voi == "window":
        ds.WindowCenter, ds.WindowWidth = round(top / 2), round(top * 0.95)
        ds.VOILUTFunction = "LINEAR"
    elif voi == "lut":
        # a monotone S-curve over the whole stored range (LUTDescriptor first value 0 means 65536 entries)
        entries = top + 1
        x = np.arange(entries) / top
        curve = 1 / (1 + np.exp(-(x - 0.5) * 6))
        curve = (curve - curve.min()) / (curve.max() - curve.min())
        item = Dataset()
        item.LUTDescriptor = [entries if entries < 65536 else 0, 0, 16]
        item.LUTExplanation = "medml synthetic S-curve"
        item.LUTData = np.round(curve * 65535).astype("<u2").tobytes()
        item["LUTData"].VR = "OW"
        ds.VOILUTSequence = [item]
    dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
    ds.PixelData = stored.astype(dtype).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


CLINICAL_FILES = {
    "pano.png": "8-bit grey PNG",
    "pano_16bit.png": "16-bit grey PNG",
    "pano_rgb.jpg": "RGB JPEG",
    "pano_px_window.dcm": "DICOM PX (DX IOD), MONOCHROME2, 12-bit, window",
    "pano_dx_mono1_window.dcm": "DICOM DX, MONOCHROME1, 12-bit, window",
    "pano_px_voilut_16bit.dcm": "DICOM PX (DX IOD), MONOCHROME2, 16-bit, VOI LUT sequence",
    "pano_dx_mono1_voilut.dcm": "DICOM DX, MONOCHROME1, 12-bit, VOI LUT sequence",
    "pano_io_8bit_window.dcm": "DICOM IO (intra-oral IOD), MONOCHROME2, 8-bit, window",
}


def write_clinical_panoramics(
    out: str | Path, *, size: tuple[int, int] = (256, 512), seed: int = 1, truth: bool = False
) -> Path:
    """A folder of panoramics as clinics send them (`CLINICAL_FILES`): PNG, 16-bit PNG, JPEG and DICOM DX/PX/IO with
    MONOCHROME1, windows, VOI LUT sequences and 8/12/16-bit pixels. With ``truth``, ``<out>_truth.json`` beside the
    folder (so the folder holds only images) gives each file's abnormal-tooth boxes, and ``<out>_truth_<stem>.npy``
    its display image in [0, 1] (for tests).
    """
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    truths: dict[str, Any] = {}
    for name in CLINICAL_FILES:
        pano = draw_panoramic(rng, height, width, n_abnormal=3)
        grey = pano.image.astype(np.float64) / 255.0
        path = out / name
        if name == "pano.png":
            _write_png(pano.image, path)
        elif name == "pano_16bit.png":
            with atomic_path(path) as tmp:
                Image.fromarray((grey * 60000 + 1000).astype(np.uint16)).save(tmp, format="PNG")
        elif name == "pano_rgb.jpg":
            with atomic_path(path) as tmp:
                Image.fromarray(np.repeat(pano.image[..., None], 3, axis=-1)).save(tmp, format="JPEG", quality=95)
        else:
            modality = "IO" if "_io_" in name else "PX" if "_px_" in name else "DX"
            bits = 16 if "16bit" in name else 8 if "8bit" in name else 12
            voi = "lut" if "voilut" in name else "window" if "window" in name else "none"
            write_panoramic_dicom(path, grey, modality=modality, monochrome1="mono1" in name, bits=bits, voi=voi)
        truths[name] = [
            {"box": [round(v, 1) for v in t.box], "quadrant": t.quadrant, "tooth": t.position, "diagnosis": d}
            for t, d in pano.abnormal
        ]
        if truth:
            np.save(out.parent / f"{out.name}_truth_{Path(name).stem}.npy", grey.astype(np.float32))
    if truth:
        _write_json(truths, out.parent / f"{out.name}_truth.json")
    return out
