"""The ``ct`` pipeline: CT-SSG 18-label chest CT classification on CT-RATE (registration, clinical cases, writers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medml.data import ctrate, radchestct
from medml.data.ctrate import LABELS
from medml.data.synthetic_ctrate import chest_hu, grid_points, random_chest, synthesize_ctrate
from medml.errors import GeometryError, UnsupportedFormatError
from medml.io import Finding, read_volume, write_dicom_sr, write_report_json
from medml.io.synthetic import write_ct_series
from medml.io.types import Volume
from medml.pipelines.base import MedmlModule, Pipeline
from medml.pipelines.ct.config import CtConfig
from medml.pipelines.ct.data import (
    CtRateData,
    cached_split,
    dataset_kind,
    preprocess_transform,
    radchest_split,
    refuse_radchest_training,
    split_dataset,
)
from medml.pipelines.ct.evaluate import PUBLISHED_RADCHEST, score, write_evaluation, z_profile_figure
from medml.pipelines.ct.module import CtModule
from medml.registry import register_pipeline

#: Private coding scheme for the 18 CT-RATE findings in DICOM SR (no verified SNOMED mapping for all 18 was found).
CODING_SCHEME = "99MEDML"


def finding_code(index: int, label: str) -> tuple[str, str, str]:
    return (f"CTRATE{index + 1:02d}", CODING_SCHEME, label)


def column(label: str) -> str:
    return label.lower().replace(" ", "_")


@register_pipeline
class CtPipeline(Pipeline):
    name = "ct"
    summary = "CT-SSG: slice-triplet graph + Chebyshev spectral conv, 18-label chest CT abnormalities (CT-RATE)"
    Config = CtConfig
    input_kinds = ("dicom_series", "dicom_multiframe", "nifti", "mha", "nrrd")
    predict_batch_size = 2
    config: CtConfig

    # ----- dataset ------------------------------------------------------------------------------------------------
    def check_layout(self, data_dir: Path) -> None:
        if dataset_kind(Path(data_dir), self.config) == "rad-chestct":
            radchestct.check_layout(data_dir)
        else:
            ctrate.check_layout(data_dir)

    def prepare(self, data_dir: Path) -> dict[str, Any]:
        """Check the layout and preprocess every volume of both splits into the cache (once)."""
        summary: dict[str, Any] = {}
        if dataset_kind(Path(data_dir), self.config) == "rad-chestct":
            ds, listing = radchest_split(Path(data_dir), "all", self.config, progress=True)
            targets = ds.targets()
            return {
                "rad-chestct": {
                    "volumes": len(ds),
                    "label_rows_without_volume": len(listing.missing),
                    "positives": {LABELS[j]: int(np.nansum(targets[:, j])) for j in radchestct.SHARED_INDEX},
                    "cache": str(ds.cache),
                }
            }
        for split in ("train", "valid"):
            ds = cached_split(Path(data_dir), split, self.config, progress=True)
            summary[split] = {
                "volumes": len(ds),
                "patients": len({v.patient for v in ds.volumes}),
                "positives": dict(zip(ctrate.LABELS, ds.targets().sum(0).tolist())),
                "cache": str(ds.cache),
            }
        return summary

    def datamodule(self, data_dir: Path) -> CtRateData:
        if dataset_kind(Path(data_dir), self.config) == "rad-chestct":
            refuse_radchest_training(Path(data_dir))
        return CtRateData(data_dir, self.config)

    def synthesize(self, out_dir: Path, seed: int = 0) -> Path:
        return synthesize_ctrate(out_dir, seed=seed)

    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        return synthesize_clinical(Path(out_dir), seed)

    # ----- model ----------------------------------------------------------------------------------------------------
    def build_module(self, datamodule) -> MedmlModule:
        # Pretrained trunk weights only when training; a checkpoint brings its own weights.
        return CtModule(self.config, pretrained=datamodule is not None)

    # ----- prediction ---------------------------------------------------------------------------------------------
    def load_case(self, case: Any) -> dict[str, Any]:
        volume = read_volume(case)
        check_chest_ct(volume, case, self.config)
        image = preprocess_transform(self.config.data)({"image": volume})["image"]
        sources = []
        if case.kind == "dicom_series":
            import pydicom

            sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in case.paths]
        return {
            "image": torch.as_tensor(np.asarray(image, dtype=np.float32)),
            "sources": sources,
            "geometry": {
                "shape_zyx": list(volume.array.shape),
                "spacing_xyz": [round(float(s), 4) for s in volume.spacing],
                "direction": np.round(np.asarray(volume.direction, float), 5).tolist(),
            },
            "warnings": list(volume.warnings),
            "SeriesInstanceUID": volume.meta.get("SeriesInstanceUID", ""),
            "StudyInstanceUID": volume.meta.get("StudyInstanceUID", ""),
        }

    def predict_batch(self, module: CtModule, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        device = next(module.parameters()).device
        image = torch.stack([s["image"] for s in samples]).to(device)
        model = module.model
        h = model.node_features(image)
        probs = torch.sigmoid(model.forward_nodes(h).float()).cpu().numpy()
        occlusion = model.node_occlusion(h).float().cpu().numpy()  # (B, N, labels)
        thresholds = module.thresholds.cpu().numpy()
        return [
            {"probs": probs[i], "thresholds": thresholds, "decision": probs[i] >= thresholds, "occlusion": occlusion[i]}
            for i in range(len(samples))
        ]

    def write_case(self, case: Any, sample: dict[str, Any], output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        labels = self.config.model.labels
        probs, decision, occ = output["probs"], output["decision"], output["occlusion"]
        z_mm = (np.arange(occ.shape[0]) * 3 + 1) * self.config.data.spacing[0]
        findings = []
        for j, label in enumerate(labels):
            findings.append(
                {
                    "label": label,
                    "probability": round(float(probs[j]), 5),
                    "threshold": round(float(output["thresholds"][j]), 4),
                    "positive": bool(decision[j]),
                    "peak_z_mm": round(float(z_mm[int(np.argmax(occ[:, j]))]), 1),
                }
            )
        write_report_json(
            {
                "case_id": case.case_id,
                "kind": case.kind,
                "StudyInstanceUID": sample["StudyInstanceUID"],
                "SeriesInstanceUID": sample["SeriesInstanceUID"],
                "source_geometry": sample["geometry"],
                "warnings": sample["warnings"],
                "preprocessing": self.config.data.preprocessing(),
                "threshold_rule": self.config.evaluate.threshold_rule,
                "findings": findings,
                "z_profile": {
                    "node_z_mm": z_mm.round(1).tolist(),
                    "logit_drop": {labels[j]: occ[:, j].round(4).tolist() for j in np.flatnonzero(decision)},
                },
            },
            out_dir / "result.json",
        )
        order = [int(j) for j in np.argsort(-probs) if decision[j]][: self.config.predict.profile_labels]
        shown = order or [int(np.argmax(probs))]
        z_profile_figure(
            sample["image"].numpy(),
            self.config.data.spacing,
            {labels[j] + ("" if decision[j] else " (below threshold)"): occ[:, j] for j in shown},
            {labels[j] + ("" if decision[j] else " (below threshold)"): float(probs[j]) for j in shown},
            out_dir / "z_profile.png",
            title=f"{case.case_id}: where along z each finding comes from",
        )
        if sample["sources"]:
            write_dicom_sr(
                sample["sources"],
                [Finding(finding_code(j, label), bool(decision[j]), float(probs[j])) for j, label in enumerate(labels)],
                out_dir / "findings_sr.dcm",
                algorithm_name="medml CT-SSG",
            )
        positive = [labels[j] for j in np.argsort(-probs) if decision[j]]
        row = {
            "kind": case.kind,
            "SeriesInstanceUID": sample["SeriesInstanceUID"],
            "n_positive": len(positive),
            "positive_labels": ";".join(positive),
        }
        row.update({f"prob_{column(label)}": round(float(probs[j]), 4) for j, label in enumerate(labels)})
        return row

    # ----- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(self, module: CtModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        if dataset_kind(Path(data_dir), self.config) == "rad-chestct":
            return self.evaluate_radchest(module, Path(data_dir), split, Path(out_dir))
        dataset = split_dataset(Path(data_dir), split, self.config)
        targets, probs = module.predict_probs(dataset)
        labels = list(self.config.model.labels)
        result = score(targets, probs, module.thresholds.cpu().numpy(), labels, self.config.evaluate.n_bootstrap)
        title = f"CT-SSG, CT-RATE {split} split ({len(targets)} volumes)"
        return write_evaluation(result, Path(out_dir), split, title, self.config.evaluate.threshold_rule)

    def evaluate_radchest(self, module: CtModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        """External test on RAD-ChestCT: the 16 labels it shares with CT-RATE (spec §2.7), same metrics and rule."""
        dataset, listing = radchest_split(data_dir, "valid" if split == "val" else split, self.config)
        targets, probs = module.predict_probs(dataset)
        keep = list(radchestct.SHARED_INDEX)
        labels = [self.config.model.labels[j] for j in keep]
        thresholds = module.thresholds.cpu().numpy()[keep]
        result = score(targets[:, keep], probs[:, keep], thresholds, labels, self.config.evaluate.n_bootstrap)
        result.update(
            dataset="rad-chestct",
            labels_left_out=[LABELS[j] for j in range(len(LABELS)) if j not in keep],
            label_rows=listing.label_rows,
            label_rows_without_volume=len(listing.missing),
        )
        title = f"CT-SSG on RAD-ChestCT {split} ({len(targets)} volumes, 16 shared labels)"
        return write_evaluation(
            result, out_dir, split, title, self.config.evaluate.threshold_rule, published=PUBLISHED_RADCHEST
        )

    def report_figures(self, run_dir: Path, eval_dir: Path, pred_dir: Path) -> list[Path]:
        return sorted(Path(eval_dir).glob("*.png")) + sorted(Path(pred_dir).glob("*/z_profile.png"))[:3]


def check_chest_ct(volume: Volume, case: Any, config: CtConfig) -> None:
    """Refuse what is not a chest CT volume: another modality, a localiser, too few slices or too short a range."""
    where = case.path
    modality = str(volume.meta.get("Modality") or case.meta.get("Modality") or "")
    if case.kind.startswith("dicom") and modality != "CT":
        raise UnsupportedFormatError(f"modality {modality or 'unknown'}, not CT", where)
    image_type = volume.meta.get("ImageType")
    if image_type and "LOCALIZER" in str(image_type).upper():
        raise UnsupportedFormatError("a localizer (scout), not a tomographic series", where)
    nz = volume.array.shape[0]
    extent = (nz - 1) * float(volume.spacing[2])
    if nz < config.predict.min_slices or extent < config.predict.min_extent_mm:
        raise GeometryError(
            f"{nz} slices covering {extent:.0f} mm; a chest CT needs >= {config.predict.min_slices} slices and "
            f">= {config.predict.min_extent_mm:.0f} mm (predict.min_slices / predict.min_extent_mm)",
            where,
        )
    if float(np.percentile(volume.array, 1)) > -500:
        raise UnsupportedFormatError("no air below -500 HU: not a CT in Hounsfield units", where)


def synthesize_clinical(out_dir: Path, seed: int = 0) -> Path:
    """A shuffled oblique DICOM CT series, a NIfTI chest volume, a 3-slice scout series and a photo (not CT)."""
    import nibabel as nib
    from PIL import Image

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Oblique series: rows and columns tilted 10 degrees about the patient's left-right axis.
    t = np.deg2rad(10.0)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), np.sin(t)])
    direction = np.stack([row, col, np.cross(row, col)], axis=1)
    labels = np.zeros(len(LABELS), int)
    labels[[LABELS.index(n) for n in ("Cardiomegaly", "Pleural effusion", "Lung nodule")]] = 1
    chest = random_chest(rng, labels)
    shape, spacing = (44, 64, 64), (5.4, 5.4, 7.5)
    points, origin = grid_points(shape, spacing, direction)
    write_ct_series(
        out_dir / "chest_oblique",
        shape=shape,
        spacing=spacing,
        origin=tuple(origin),
        orientation=(*row, *col),
        hu=chest_hu(points, chest, rng),
        seed=seed,
        shuffle_instance_numbers=True,
    )
    labels = np.zeros(len(LABELS), int)
    labels[[LABELS.index(n) for n in ("Emphysema", "Hiatal hernia", "Arterial wall calcification")]] = 1
    points, origin = grid_points((40, 64, 64), (5.4, 5.4, 8.0))
    hu = chest_hu(points, random_chest(rng, labels), rng).astype(np.int16)
    affine = np.diag([-5.4, -5.4, 8.0, 1.0])  # LPS-aligned voxel axes written as RAS
    affine[:3, 3] = [-origin[0], -origin[1], origin[2]]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine), str(out_dir / "chest.nii.gz"))
    write_ct_series(out_dir / "scout", shape=(3, 64, 64), spacing=(5.4, 5.4, 7.5), seed=seed + 1)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(out_dir / "photo.png")
    return out_dir
