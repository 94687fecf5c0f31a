"""Synthetic REFUGE: fundus photographs in the REFUGE-2018 release layout, and a clinical folder for ``predict``.

Each photograph has a circular field of view with a vignette, a darker macula with the fovea at its centre, an optic
disc about 2.5 disc diameters nasal to the fovea (left or right eye), a paler cup whose vertical cup-to-disc ratio
follows the label (glaucoma 0.6-0.8, not 0.3-0.5), and vessels leaving the disc. Two "cameras" differ in size and
colour cast so per-camera evaluation and colour normalisation have something to do. Masks are written as the
challenge's BMPs (0 cup, 128 rim, 255 background), fovea positions and labels as the release's XLSX tables (CSV
when openpyxl is missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from medml.data.refuge import write_challenge_mask
from medml.io.synthetic import _base_dataset
from medml.utils.files import atomic_path

OP_8BIT_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image Storage


@dataclass(frozen=True)
class Camera:
    name: str
    width: int
    height: int
    cast: tuple[float, float, float]  # RGB gain


CAMERAS = (
    Camera("synthetic-A", 256, 248, (1.0, 0.95, 0.85)),
    Camera("synthetic-B", 224, 224, (0.85, 1.0, 1.1)),
)


def draw_fundus(
    rng: np.random.Generator,
    width: int,
    height: int,
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0),
    cdr: float | None = 0.4,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """One synthetic photograph: (RGB uint8 HxWx3, labels {0 bg, 1 rim, 2 cup}, fovea (x, y)).

    ``cdr=None`` draws no disc (for the "no visible disc" clinical case).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width / 2 + rng.normal(0, 0.01 * width), height / 2 + rng.normal(0, 0.01 * height)
    radius = 0.48 * min(width, height)
    rr = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / radius
    fov = rr <= 1.0
    base = np.array([190, 85, 40], np.float32) * rng.uniform(0.85, 1.15)
    image = np.ones((height, width, 3), np.float32) * base
    image *= (1.0 - 0.45 * rr**2)[..., None]  # vignette
    low = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 0.06 * width)
    image *= (1.0 + 0.6 * low / (np.abs(low).max() + 1e-6))[..., None] * 0.1 + 0.9
    # macula / fovea near the centre
    fx, fy = cx + rng.normal(0, 0.04 * width), cy + rng.normal(0, 0.04 * height)
    macula = np.exp(-((xx - fx) ** 2 + (yy - fy) ** 2) / (2 * (0.07 * width) ** 2))
    image *= (1.0 - 0.45 * macula)[..., None]
    labels = np.zeros((height, width), np.uint8)
    side = rng.choice([-1.0, 1.0])  # left or right eye
    disc_r = 0.065 * width * rng.uniform(0.9, 1.1)
    dx, dy = fx + side * 2.5 * 2 * disc_r, fy - rng.uniform(0.0, 0.4) * disc_r
    if cdr is not None:
        ry, rx = disc_r * rng.uniform(1.0, 1.12), disc_r * rng.uniform(0.9, 1.0)
        disc = ((xx - dx) / rx) ** 2 + ((yy - dy) / ry) ** 2 <= 1.0
        cry, crx = cdr * ry, cdr * rx * rng.uniform(0.85, 1.0)
        ccx = dx - side * rng.uniform(0.0, 0.1) * rx  # cups sit slightly temporal
        cup = (((xx - ccx) / crx) ** 2 + ((yy - dy) / cry) ** 2 <= 1.0) & disc
        labels[disc] = 1
        labels[cup] = 2
        soft_disc = cv2.GaussianBlur(disc.astype(np.float32), (0, 0), 0.6)
        soft_cup = cv2.GaussianBlur(cup.astype(np.float32), (0, 0), 0.6)
        disc_rgb = np.array([245, 175, 95], np.float32)
        cup_rgb = np.array([255, 235, 190], np.float32)
        image = image * (1 - soft_disc[..., None]) + disc_rgb * soft_disc[..., None]
        image = image * (1 - soft_cup[..., None]) + cup_rgb * soft_cup[..., None]
    else:
        dx, dy = fx + side * 5 * disc_r, fy
    # vessels: arcs from the disc centre (or its would-be place) towards the periphery
    vessels = np.zeros((height, width), np.uint8)
    for k in range(6):
        angle = rng.uniform(0, 2 * np.pi)
        bend = rng.normal(0, 0.6)
        pts = []
        for t in np.linspace(0, 1, 20):
            a = angle + bend * t
            r = t * 0.9 * width
            pts.append((dx + r * np.cos(a), dy + r * np.sin(a)))
        thickness = max(1, int(round(width / 180 * (2 if k < 2 else 1))))
        cv2.polylines(vessels, [np.array(pts, np.int32)], False, 1, thickness, lineType=cv2.LINE_AA)
    vessel_soft = cv2.GaussianBlur(vessels.astype(np.float32), (0, 0), 0.5)
    image = (
        image * (1 - 0.45 * vessel_soft[..., None])
        + np.array([120, 20, 15], np.float32) * 0.45 * vessel_soft[..., None]
    )
    image *= np.array(cast, np.float32)
    image += rng.normal(0, 3.0, image.shape)
    image[~fov] = 0
    labels[~fov] = 0
    return np.clip(image, 0, 255).astype(np.uint8), labels, (float(fx), float(fy))


def _write_jpeg(image: np.ndarray, path: Path, quality: int = 92) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=quality)


def _write_table(rows: list[dict], path: Path) -> Path:
    """The release's XLSX (CSV with the same columns when openpyxl is not installed)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        path = path.with_suffix(".csv")
        df.to_csv(path, index=False)
        return path
    df.to_excel(path, index=False)
    return path


SPLIT_FOLDERS = {
    "train": ("Training400", "Annotation-Training400", "Fovea_location.xlsx"),
    "val": ("REFUGE-Validation400", "REFUGE-Validation400-GT", "Fovea_locations.xlsx"),
    "test": ("REFUGE-Test400", "REFUGE-Test-GT", "Glaucoma_label_and_Fovea_location.xlsx"),
}


def write_synthetic_refuge(
    out_dir: str | Path, seed: int = 0, n_train: int = 96, n_val: int = 24, n_test: int = 40, glaucoma_share=0.4
) -> Path:
    """Write train/val/test splits in the REFUGE-2018 layout; both cameras in every split."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        image_dir, gt_dir, table_name = SPLIT_FOLDERS[split]
        labels = (np.arange(count) < max(1, round(glaucoma_share * count))).astype(int)
        rng.shuffle(labels)
        rows = []
        counters = {0: 0, 1: 0}
        for i, label in enumerate(labels):
            camera = CAMERAS[i % len(CAMERAS)]
            cdr = rng.uniform(0.6, 0.8) if label else rng.uniform(0.3, 0.5)
            image, mask, fovea = draw_fundus(rng, camera.width, camera.height, camera.cast, cdr)
            if split == "train":
                counters[label] += 1
                name = f"{'g' if label else 'n'}{counters[label]:04d}"
                folder = "Glaucoma" if label else "Non-Glaucoma"
                img_path = out / image_dir / folder / f"{name}.jpg"
                mask_path = out / gt_dir / "Disc_Cup_Masks" / folder / f"{name}.bmp"
                rows.append({"ID": i + 1, "ImgName": f"{name}.jpg", "Fovea_X": fovea[0], "Fovea_Y": fovea[1]})
            else:
                name = f"{split[0].upper()}{i + 1:04d}"
                img_path = out / image_dir / f"{name}.jpg"
                mask_path = out / gt_dir / "Disc_Cup_Masks" / f"{name}.bmp"
                rows.append(
                    {
                        "ID": i + 1,
                        "ImgName": f"{name}.jpg",
                        "Glaucoma Label": int(label),
                        "Fovea_X": fovea[0],
                        "Fovea_Y": fovea[1],
                    }
                )
            _write_jpeg(image, img_path)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            write_challenge_mask(mask, mask_path)
        _write_table(rows, out / gt_dir / table_name)
    return out


def write_op_dicom(path: str | Path, image: np.ndarray, compressed: bool = False) -> Path:
    """An Ophthalmic Photography 8 Bit image: RGB native, or JPEG baseline (YBR_FULL_422) when ``compressed``."""
    from PIL import Image

    rows, cols = image.shape[:2]
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    ds: Dataset = _base_dataset(OP_8BIT_STORAGE, "OP", study, series, sop)
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = 1
    ds.FrameTime = 0
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.PatientOrientation = ""
    ds.ImageLaterality = "R"
    ds.SynchronizationFrameOfReferenceUID = "1.2.840.10008.15.1.1"  # UTC synchronisation
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "81745001", "SCT", "Eye"
    ds.AnatomicRegionSequence = [region]
    ds.PatientEyeMovementCommanded = ""
    ds.HorizontalFieldOfView = 45
    # Ophthalmic acquisition and photographic parameters: type 2 left empty; the device code (CID 4202 "Fundus
    # Camera") is what a fundus camera writes, taken as SNOMED CT 409898007 (not checked against the code list).
    device = Dataset()
    device.CodeValue, device.CodingSchemeDesignator, device.CodeMeaning = "409898007", "SCT", "Fundus Camera"
    ds.AcquisitionDeviceTypeCodeSequence = [device]
    for keyword in (
        "RefractiveStateSequence",
        "IlluminationTypeCodeSequence",
        "LightPathFilterTypeStackCodeSequence",
        "ImagePathFilterTypeStackCodeSequence",
        "LensesCodeSequence",
    ):
        setattr(ds, keyword, [])
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.PupilDilated = ""
    ds.DetectorType = "CCD"
    ds.PixelSpacing = [0.01, 0.01]
    ds.AcquisitionDateTime = "20240102120000"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01" if compressed else "00"
    if compressed:
        import io as _io

        buf = _io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = round(image.nbytes / len(buf.getvalue()), 2)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = np.ascontiguousarray(image).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def write_synthetic_clinical_fundus(out_dir: str | Path, seed: int = 1) -> Path:
    """A JPEG, a PNG, an RGB DICOM OP photograph, a JPEG-compressed (YBR) DICOM OP and a photograph without a disc."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    a, b = CAMERAS
    image, _, _ = draw_fundus(rng, a.width, a.height, a.cast, cdr=0.7)
    _write_jpeg(image, out / "eye_glaucoma_suspect.jpg")
    image, _, _ = draw_fundus(rng, b.width, b.height, b.cast, cdr=0.35)
    with atomic_path(out / "eye_normal.png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    image, _, _ = draw_fundus(rng, a.width, a.height, a.cast, cdr=0.45)
    write_op_dicom(out / "op_rgb.dcm", image)
    image, _, _ = draw_fundus(rng, b.width, b.height, b.cast, cdr=0.75)
    write_op_dicom(out / "op_jpeg_ybr.dcm", image, compressed=True)
    image, _, _ = draw_fundus(rng, a.width, a.height, a.cast, cdr=None)
    _write_jpeg(image, out / "no_disc.jpg")
    return out
