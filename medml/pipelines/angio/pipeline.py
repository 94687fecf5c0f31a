"""The ``angio`` pipeline: semi-supervised multi-class segmentation of X-ray angiography video (MOSXAV).

RNPLL-style (spec part A, revised): a denoising diffusion model over the latent of semantic labels, conditioned on
the frame (and on a MONAI U-Net segmenter's prior), segments every frame; it is trained on few labelled and many
unlabelled frames with an EMA teacher's pseudo-labels, with prototype-based contrastive consistency on the denoised
latents and ground-truth-anchored prototypes that down-weight pseudo-labels disagreeing with them. The paper
publishes no architecture or hyper-parameters; every choice is a config key (``config.py``) and the model card
(``pipelines/angio/README.md``) says which values are verified (DiffRect, MOSXAV) and which are medml's proposal [P].

This module registers the pipeline and handles clinical files; the schema is in ``config.py``, the training data
in ``data.py``, the networks in ``model.py``, the training loop in ``module.py`` and the scores in ``evaluate.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pydicom
from monai.transforms import Compose

from medml import io
from medml.data.mosxav import MOSXAV, PALETTE, check_mosxav_layout
from medml.data.synthetic_mosxav import write_synthetic_clinical_angio, write_synthetic_mosxav
from medml.errors import CorruptFileError, UnsupportedFormatError
from medml.pipelines.angio.config import AngioConfig
from medml.pipelines.angio.data import AngioDataModule, labelled_pools
from medml.pipelines.angio.evaluate import evaluate_split
from medml.pipelines.angio.module import AngioModule
from medml.pipelines.angio.outputs import (
    class_areas,
    dicom_pixel_spacing,
    segment_table,
    with_legend,
    write_labels_nifti,
)
from medml.pipelines.base import Pipeline
from medml.registry import register_pipeline
from medml.transforms.angio import frame_preprocessing


def module_predicts_by_diffusion(cfg: AngioConfig) -> bool:
    return cfg.model.method in ("diffrect", "rnpll") and cfg.model.predictor == "diffusion"


@register_pipeline
class AngioPipeline(Pipeline):
    name = "angio"
    summary = "X-ray angiography video: semi-supervised label-latent diffusion segmentation (RNPLL-style, MOSXAV)"
    Config = AngioConfig
    input_kinds = ("dicom_multiframe", "video", "frames")
    predict_batch_size = 1  # one video per batch; frames are batched inside predict_batch

    config: AngioConfig

    def preprocess(self) -> Compose:
        """Clinical frames -> the model input, as the training frames (`frame_preprocessing`), and the native grey."""
        return frame_preprocessing(self.config.data.size, native_key="frames")

    # ----- dataset -------------------------------------------------------------------------------------------------
    def check_layout(self, data_dir: Path) -> None:
        check_mosxav_layout(data_dir)

    def prepare(self, data_dir: Path) -> dict[str, Any]:
        self.check_layout(data_dir)
        mosxav, cfg = MOSXAV(data_dir), self.config.data
        summary = mosxav.split_summary()
        labelled, unlabelled = labelled_pools(mosxav, cfg.labelled_fraction, cfg.labelled_by, cfg.split_seed)
        summary.update(n_labelled=len(labelled), n_unlabelled=len(unlabelled))
        return summary

    def datamodule(self, data_dir: Path) -> AngioDataModule:
        return AngioDataModule(Path(data_dir), self.config)

    def synthesize(self, out_dir: Path, seed: int = 0) -> Path:
        return write_synthetic_mosxav(out_dir, seed=seed)

    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        return write_synthetic_clinical_angio(out_dir, seed=seed)

    # ----- model ---------------------------------------------------------------------------------------------------
    def build_module(self, datamodule: L.LightningDataModule | None) -> AngioModule:
        return AngioModule(self.config)

    # ----- prediction ----------------------------------------------------------------------------------------------
    def load_case(self, case: Any) -> dict[str, Any]:
        video = io.read_video(case)
        frames = np.asarray(video.frames)
        if frames.ndim not in (3, 4) or frames.shape[0] < 1:
            raise UnsupportedFormatError(
                f"expected a video of frames, got an array of shape {frames.shape}", case.paths[0]
            )
        video_in = self.preprocess()({"image": frames})
        if not np.isfinite(video_in["frames"]).all():
            raise CorruptFileError("frames hold non-finite values", case.paths[0])
        spacing, spacing_source = None, None
        if case.kind == "dicom_multiframe":
            # medml.io merges PixelSpacing and ImagerPixelSpacing; areas need to know which one it was.
            spacing, spacing_source = dicom_pixel_spacing(pydicom.dcmread(case.paths[0], stop_before_pixels=True))
        elif video.meta.get("pixel_spacing"):
            row_mm, col_mm = video.meta["pixel_spacing"][:2]
            spacing, spacing_source = (float(row_mm), float(col_mm)), "input metadata"
        return {
            "image": video_in["image"],  # (T, size, size), exactly as the training frames
            "frames": video_in["frames"],  # (T, H, W) grey in [0, 1]: output size and overlay
            "fps": float(video.fps),
            "frame_times_ms": np.asarray(video.frame_times_ms),
            "meta": dict(video.meta),
            "kind": case.kind,
            "source": Path(case.paths[0]),
            "spacing": spacing,
            "spacing_source": spacing_source,
        }

    def predict_batch(self, module: AngioModule, samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        ev = self.config.eval
        return [
            {"labels": module.segment_frames(s["image"], s["frames"].shape[-2:], ev.frame_batch, ev.seed)}
            for s in samples
        ]

    def write_case(self, case: Any, sample: dict[str, Any], output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        labels: np.ndarray = output["labels"]
        names = self.config.model.class_names
        palette = [tuple(c) for c in PALETTE[: len(names)]]
        for t, frame in enumerate(labels):
            io.write_palette_png(frame, palette, out_dir / "labels" / f"{t:05d}.png")
        spacing, spacing_source = sample.get("spacing"), sample.get("spacing_source")
        write_labels_nifti(labels, sample["meta"], out_dir / "labels.nii.gz")  # on the grid of `medml convert`
        wrote_seg = False
        if sample["kind"] == "dicom_multiframe":
            source = pydicom.dcmread(sample["source"])
            io.write_dicom_seg(
                source,
                labels,
                segment_table(names),
                out_dir / "seg.dcm",
                series_description="medml angio segmentation",
                algorithm_name="medml-angio",
                strict_pixel_measures=True,  # ImagerPixelSpacing is detector-plane: never relabelled PixelSpacing
            )
            wrote_seg = True
        display = np.round(sample["frames"] * 255).astype(np.uint8)
        display, shown = with_legend(display, labels, names)  # the classes named in their colours under the frames
        io.write_overlay_video(display, shown, palette, out_dir / "overlay.mp4", fps=sample["fps"] or 15.0)
        areas = class_areas(labels, names, spacing, sample["frame_times_ms"], spacing_source)
        io.write_csv(areas, out_dir / "areas.csv")
        row: dict[str, Any] = {
            "kind": sample["kind"],
            "frames": int(labels.shape[0]),
            "height": int(labels.shape[1]),
            "width": int(labels.shape[2]),
            "fps": round(float(sample["fps"]), 3),
            "seg": wrote_seg,
            "predictor": "diffusion" if module_predicts_by_diffusion(self.config) else "segmenter",
            "spacing_source": spacing_source or "",
        }
        for c in range(1, len(names)):
            row[f"mean_{names[c]}_px"] = round(float(np.mean([a[f"{names[c]}_px"] for a in areas])), 2)
        return row

    # ----- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, module: AngioModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        return evaluate_split(self.config, module, Path(data_dir), split, Path(out_dir))

    def report_figures(self, run_dir: Path, eval_dir: Path, pred_dir: Path) -> list[Path]:
        return sorted(Path(eval_dir).glob("*.png"))
