"""The ``dental`` pipeline: HierarchicalDet on DENTEX panoramics (registration, clinical cases, writers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medml.data import dentex
from medml.errors import AbsurdSizeError, UnsupportedFormatError
from medml.pipelines.base import MedmlModule, Pipeline
from medml.pipelines.dental.config import DentalConfig
from medml.pipelines.dental.data import DentexData, collate, network_sample
from medml.pipelines.dental.evaluate import evaluate_split
from medml.pipelines.dental.module import DentalModule
from medml.registry import register_pipeline


@register_pipeline
class DentalPipeline(Pipeline):
    name = "dental"
    summary = "HierarchicalDet: diffusion box detection with quadrant / tooth / diagnosis heads (DENTEX panoramics)"
    Config = DentalConfig
    input_kinds = ("image", "dicom_image")
    predict_batch_size = 2
    config: DentalConfig

    # ----- dataset ------------------------------------------------------------------------------------------------
    def check_layout(self, data_dir: Path) -> None:
        tiers = [("disease" if s.tier == "diagnosis" else s.tier) for s in self.config.stages if s.enabled]
        dentex.load_dentex(Path(data_dir), tiers=sorted(set(tiers)))

    def prepare(self, data_dir: Path) -> dict[str, Any]:
        d = self.config.data
        _, summary = dentex.prepare_dentex(
            Path(data_dir), exclude_duplicates=d.exclude_overlap, val_fraction=d.val_fraction, seed=d.split_seed
        )
        return summary

    def datamodule(self, data_dir: Path) -> DentexData:
        return DentexData(Path(data_dir), self.config)

    def synthesize(self, out_dir: Path, seed: int = 0) -> Path:
        from medml.data.synthetic_dentex import write_synthetic_dentex

        return write_synthetic_dentex(Path(out_dir), seed=seed)

    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        from medml.data.synthetic_dentex import write_clinical_panoramics

        return write_clinical_panoramics(Path(out_dir), seed=seed)

    # ----- model ----------------------------------------------------------------------------------------------------
    def build_module(self, datamodule) -> MedmlModule:
        # ImageNet weights only when training starts; a checkpoint brings its own weights.
        return DentalModule(self.config, pretrained=datamodule is not None, datamodule=datamodule)

    # ----- prediction ---------------------------------------------------------------------------------------------
    def load_case(self, case: Any) -> dict[str, Any]:
        path = Path(case.paths[0])
        grey, meta = dentex.read_panoramic(path)
        if grey.ndim != 2:
            raise UnsupportedFormatError(f"expected a 2D panoramic, got shape {grey.shape}", path)
        h, w = grey.shape
        if min(h, w) < 64:
            raise AbsurdSizeError(f"{w}x{h} pixels is too small for a panoramic radiograph", path)
        if h * w > self.config.predict.max_pixels:
            raise AbsurdSizeError(f"{w}x{h} pixels exceeds predict.max_pixels", path)
        modality = str(meta.get("Modality") or "")
        if case.kind == "dicom_image" and modality and modality not in ("PX", "DX", "IO", "CR", "OT"):
            raise UnsupportedFormatError(f"modality {modality}, not a dental radiograph (PX, DX, IO)", path)
        sample = network_sample(grey, self.config.data, case_id=str(path))
        return {"network": sample, "grey": grey, "kind": case.kind, "source": path, "meta": meta}

    def predict_batch(self, module: DentalModule, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return module.detect_batch(collate([s["network"] for s in samples]), level=2)

    def write_case(self, case: Any, sample: dict[str, Any], output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        from medml.pipelines.dental import outputs  # the output writers (COCO results, submission, SR, overlay)

        return outputs.write_case_outputs(self.config, case, sample, output, out_dir)

    # ----- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(self, module: DentalModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        return evaluate_split(self.config, module, Path(data_dir), split, Path(out_dir))

    def report_figures(self, run_dir: Path, eval_dir: Path, pred_dir: Path) -> list[Path]:
        return sorted(Path(eval_dir).glob("*.png")) + sorted(Path(pred_dir).glob("*/*overlay*.png"))[:2]


def fdi_codes(labels: np.ndarray) -> list[int]:
    return [dentex.fdi_code(int(q), int(t)) for q, t in labels[:, :2]]
