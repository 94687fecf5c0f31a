"""The ``fundus`` pipeline: glaucoma screening on colour fundus photographs per REFUGE2 (spec part B).

Disc localisation and fovea heatmap on the downscaled photograph, rim/cup segmentation on the disc ROI pasted back
at the original resolution, the official vCDR, and glaucoma classification from the ROI, its masks and the vCDR;
evaluated with the REFUGE metrics overall and per camera.

This module registers the pipeline and handles clinical files; the schema is in ``config.py``, the training data
in ``data.py``, the networks in ``model.py``, the training loop and inference in ``module.py``, the scores in
``evaluate.py`` and the clinical outputs in ``outputs.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pydicom

from medml import io
from medml.data.refuge import camera_for_size, check_refuge_layout
from medml.data.synthetic_refuge import write_synthetic_clinical_fundus, write_synthetic_refuge
from medml.errors import AbsurdSizeError, UnsupportedFormatError
from medml.pipelines.base import Pipeline
from medml.pipelines.fundus.config import FundusConfig
from medml.pipelines.fundus.data import FundusDataModule
from medml.pipelines.fundus.evaluate import evaluate_split
from medml.pipelines.fundus.module import FundusModule
from medml.pipelines.fundus.outputs import SEGMENTS, overlay_figure, write_submission
from medml.registry import register_pipeline


@register_pipeline
class FundusPipeline(Pipeline):
    name = "fundus"
    summary = "Colour fundus photographs: optic disc/cup, vCDR, glaucoma and fovea (REFUGE2-style)"
    Config = FundusConfig
    input_kinds = ("image", "dicom_image")
    predict_batch_size = 4

    config: FundusConfig

    # ----- dataset -------------------------------------------------------------------------------------------------
    def check_layout(self, data_dir: Path) -> None:
        check_refuge_layout(data_dir, need=("train",))

    def prepare(self, data_dir: Path) -> dict[str, Any]:
        return check_refuge_layout(data_dir, need=("train",)).split_summary()

    def datamodule(self, data_dir: Path) -> FundusDataModule:
        return FundusDataModule(Path(data_dir), self.config)

    def synthesize(self, out_dir: Path, seed: int = 0) -> Path:
        return write_synthetic_refuge(out_dir, seed=seed)

    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        return write_synthetic_clinical_fundus(out_dir, seed=seed)

    # ----- model ---------------------------------------------------------------------------------------------------
    def build_module(self, datamodule: L.LightningDataModule | None) -> FundusModule:
        # ImageNet weights only when training starts; a checkpoint brings its own at prediction.
        return FundusModule(self.config, pretrained=datamodule is not None)

    # ----- prediction ----------------------------------------------------------------------------------------------
    def load_case(self, case: Any) -> dict[str, Any]:
        image = io.read_image(case, rgb=True)
        rgb = np.asarray(image.array)
        if rgb.ndim != 3 or rgb.shape[-1] < 3:
            raise UnsupportedFormatError(
                f"a fundus photograph must be colour (HxWx3), got shape {rgb.shape}", case.paths[0]
            )
        if rgb.dtype != np.uint8:  # 16-bit colour: scale to 8 bits as the training JPEGs
            rgb = np.round(rgb.astype(np.float32) / max(float(rgb.max()), 1.0) * 255).astype(np.uint8)
        rgb = np.ascontiguousarray(rgb[..., :3])
        if min(rgb.shape[:2]) < 64:
            raise AbsurdSizeError(
                f"{rgb.shape[1]}x{rgb.shape[0]} pixels is too small for a fundus photograph", case.paths[0]
            )
        return {"rgb": rgb, "kind": case.kind, "source": Path(case.paths[0])}

    def predict_batch(self, module: FundusModule, samples: Sequence[dict[str, Any]]) -> list[Any]:
        outputs: list[Any] = []
        for s in samples:
            try:
                outputs.append(module.analyse(s["rgb"], str(s["source"])))
            except Exception as exc:  # noqa: BLE001 - the runner turns it into this case's failures.csv row
                outputs.append(exc)
        return outputs

    def write_case(self, case: Any, sample: dict[str, Any], output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        rgb, labels = sample["rgb"], output["labels"]
        source: Path = sample["source"]
        file_name = (
            source.name if source.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff") else f"{source.stem}.jpg"
        )
        write_submission(out_dir, file_name, labels, output["probability"], output["fovea"])
        wrote_seg = False
        if sample["kind"] == "dicom_image":
            io.write_dicom_seg(
                pydicom.dcmread(source),
                labels,
                SEGMENTS,
                out_dir / "seg.dcm",
                series_description="medml fundus optic disc/cup",
                algorithm_name="medml-fundus",
            )
            wrote_seg = True
        overlay_figure(rgb, output, out_dir / "overlay.png", title=source.name)
        height, width = labels.shape
        return {
            "kind": sample["kind"],
            "width": width,
            "height": height,
            "camera": camera_for_size(width, height),
            "vcdr": round(output["vcdr"], 4),
            "glaucoma_probability": round(output["probability"], 4),
            "fovea_x": round(output["fovea"][0], 2),
            "fovea_y": round(output["fovea"][1], 2),
            "disc_px": int((labels > 0).sum()),
            "cup_px": int((labels == 2).sum()),
            "seg": wrote_seg,
        }

    # ----- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, module: FundusModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        return evaluate_split(self.config, module, Path(data_dir), split, Path(out_dir))

    def report_figures(self, run_dir: Path, eval_dir: Path, pred_dir: Path) -> list[Path]:
        return sorted(Path(eval_dir).glob("*.png")) + sorted(Path(pred_dir).glob("*/overlay.png"))[:2]
