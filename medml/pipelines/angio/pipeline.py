"""The ``angio`` pipeline: semi-supervised multi-class segmentation of X-ray angiography video (MOSXAV).

RNPLL-style (spec part A): a MONAI U-Net segmenter trained on few labelled and many unlabelled frames with an EMA
teacher's confidence-masked pseudo-labels, rectified by denoising diffusion over label latents conditioned on the
frame, with prototype-based contrastive consistency in that latent. The paper publishes no architecture or
hyper-parameters; every choice is a config key below and the model card (``pipelines/angio/README.md``) says which
values are verified (DiffRect, MOSXAV) and which are medml's proposal [P].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from pydantic import field_validator

from medml.config import OptimConfig, PipelineConfig, StageConfig, Strict, TrainConfig
from medml.data.mosxav import (
    CLASS_NAMES,
    IGNORE_INDEX,
    MOSXAV,
    PALETTE,
    TRAIN_CLASSES,
    AngioFrames,
    check_mosxav_layout,
    labelled_pools,
)
from medml.engine.data import eval_loader, train_loader
from medml.errors import CorruptFileError, UnsupportedFormatError
from medml.pipelines.angio.augment import LabelledViews, UnlabelledViews, strong_transform, weak_transform
from medml.pipelines.angio.module import AngioModule
from medml.pipelines.base import Pipeline
from medml.registry import register_pipeline
from medml.utils.files import atomic_path, write_json

DIFFUSION_PRESETS = {"default": (1000, 10), "diffrect": (10, 2)}  # (training timesteps, DDIM sampling steps)


class AngioData(Strict):
    """Frames, labelled fraction and augmentation."""

    size: int = 512  # MOSXAV frames are 512x512 [V]; any input is resized to this and predictions resized back
    labelled_fraction: float = 0.25  # 1/8, 1/4, 1/2, 1 of the annotated training frames [P protocol]
    labelled_by: Literal["frames", "videos"] = "frames"  # "videos" is stricter (no neighbouring-frame leakage)
    split_seed: int = 0  # seed of the labelled draw (recorded in run.json)
    unlabelled_batch_size: int = 4  # per device; train.batch_size is the labelled batch [P]
    others: Literal["ignore", "background"] = "ignore"  # class 5 (test only): excluded from scoring, or background
    augment: bool = True
    rotate_limit: float = 15.0  # degrees (XRAVOS uses +-15 [V])
    scale_min: float = 0.85
    scale_max: float = 1.15
    flip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    cutout_p: float = 0.5

    @field_validator("labelled_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError("must be in (0, 1]")
        return value


class AngioModel(Strict):
    """Networks, teacher and pseudo-labels. All [P] except where noted."""

    method: Literal["rnpll", "mean_teacher", "supervised"] = "rnpll"
    num_classes: int = TRAIN_CLASSES  # background, vessel, contrast catheter, catheter, balloon [V]
    class_names: list[str] = list(CLASS_NAMES[:TRAIN_CLASSES])
    in_channels: int = 1  # grey X-ray
    segmenter: Literal["basic_unet", "unet"] = "basic_unet"
    seg_features: list[int] = [32, 32, 64, 128, 256, 32]  # MONAI BasicUNet defaults
    latent_channels: int = 64  # d of the label latent (spec §A5.2)
    encoder_widths: list[int] = [32, 64, 128]  # three stride-2 levels: latent at stride 8 (spec §A5.2)
    cond_channels: int = 64
    denoiser_channels: list[int] = [128, 256]
    denoiser_res_blocks: int = 1
    denoiser_attention: list[bool] = [False, True]
    denoiser_head_channels: int = 32
    denoiser_groups: int = 32
    ema_decay: float = 0.99  # mean-teacher EMA (spec §A5.4)
    confidence: float = 0.8  # pseudo-label confidence threshold (DiffRect default [V])
    refine_pseudo_labels: bool = True  # rnpll: teacher pseudo-labels rectified by DDIM sampling
    refine_start_step: int = 1000  # steps before the rectified pseudo-labels are used (DiffRect refine_start [V])
    refine_at_inference: bool = False  # predict/evaluate with DDIM rectification of the segmenter's output
    infer_with_teacher: bool = True  # validate, evaluate and predict with the EMA teacher

    @field_validator("seg_features")
    @classmethod
    def _features(cls, value: list[int]) -> list[int]:
        if len(value) not in (5, 6):
            raise ValueError("needs 6 widths (BasicUNet) or 5 (UNet)")
        return value


class AngioDiffusion(Strict):
    """Label-latent diffusion: x0 prediction, DDPM training noise, DDIM sampling."""

    preset: Literal["default", "diffrect"] = "default"  # default: T=1000, DDIM 10 [P]; diffrect: T=10, DDIM 2 [V]
    train_timesteps: int | None = None  # overrides the preset
    inference_steps: int | None = None  # overrides the preset
    schedule: Literal["cosine", "linear_beta", "scaled_linear_beta", "sigmoid_beta"] = "cosine"  # DiffRect [V]

    def resolved(self) -> tuple[int, int]:
        steps_train, steps_sample = DIFFUSION_PRESETS[self.preset]
        steps_train = self.train_timesteps or steps_train
        steps_sample = min(self.inference_steps or steps_sample, steps_train)
        return steps_train, steps_sample


class AngioLoss(Strict):
    """``L = L_sup + lambda_u(t) L_unsup + lambda_diff L_diff + lambda_p L_proto`` (spec §A5.6) [P]."""

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    class_weights: list[float] | None = None  # cross-entropy weight per class (None: equal)
    unsup_weight: float = 1.0  # lambda_u, ramped
    rampup_fraction: float = 0.4  # sigmoid ramp of lambda_u over this share of the training steps
    diff_weight: float = 1.0  # lambda_diff: x0 latent MSE + decoded Dice/CE + label auto-encoding
    proto_weight: float = 0.1  # lambda_p
    proto_temperature: float = 0.1  # tau
    proto_momentum: float = 0.99  # EMA of the class prototypes
    proto_min_fraction: float = 0.25  # share of a stride-8 cell a foreground class needs to label that cell
    proto_align_weight: float = 0.0  # optional ||p_L - p_U||^2 between labelled and unlabelled batch prototypes


class AngioEval(Strict):
    figure_frames: int = 4  # frames shown in the evaluation figure
    frame_batch: int = 16  # frames per forward pass in evaluate / predict
    seed: int = 0  # seed of the DDIM noise at inference (predictions are reproducible)


class AngioConfig(PipelineConfig):
    """Defaults = the paper-size configuration (``pipelines/angio/paper.yaml``)."""

    train: TrainConfig = TrainConfig(
        batch_size=4,
        max_epochs=100,
        monitor="val_dice",
        monitor_mode="max",
        # DiffRect's segmentation optimiser [V]: SGD 0.01, momentum 0.9, wd 1e-4, poly 0.9.
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="poly", poly_power=0.9),
    )
    stages: list[StageConfig] = [StageConfig(name="train")]
    data: AngioData = AngioData()
    model: AngioModel = AngioModel()
    diffusion: AngioDiffusion = AngioDiffusion()
    loss: AngioLoss = AngioLoss()
    eval: AngioEval = AngioEval()


# ----- data ------------------------------------------------------------------------------------------------------
class AngioDataModule(L.LightningDataModule):
    """Labelled + unlabelled training streams (CombinedLoader, max_size_cycle) and the validation videos."""

    def __init__(self, data_dir: Path, config: AngioConfig):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.config = config
        self.split_summary: dict[str, Any] = {}
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        cfg = self.config.data
        mosxav = MOSXAV(self.data_dir)
        labelled, unlabelled = labelled_pools(mosxav, cfg.labelled_fraction, cfg.labelled_by, cfg.split_seed)
        val = mosxav.items("val", annotated_only=True)
        weak = (
            weak_transform(cfg.rotate_limit, (cfg.scale_min, cfg.scale_max), flip_p=cfg.flip_p) if cfg.augment else None
        )
        strong = strong_transform(cfg.brightness, cfg.contrast, cutout_p=cfg.cutout_p) if cfg.augment else None
        self.train_labelled = LabelledViews(AngioFrames(labelled, cfg.size, cfg.others), weak)
        self.train_unlabelled = UnlabelledViews(AngioFrames(unlabelled, cfg.size, cfg.others), weak, strong)
        self.val = AngioFrames(val, cfg.size, cfg.others)
        self.split_summary = {
            **mosxav.split_summary(),
            "labelled_fraction": cfg.labelled_fraction,
            "labelled_by": cfg.labelled_by,
            "split_seed": cfg.split_seed,
            "labelled_frames": [f"{i.video}/{i.image_path.name}" for i in labelled],
            "n_labelled": len(labelled),
            "n_unlabelled": len(unlabelled),
            "n_val_frames": len(val),
        }
        self._ready = True

    def train_dataloader(self) -> CombinedLoader:
        train = self.config.train
        bs_l = min(train.batch_size, len(self.train_labelled))
        loaders = {"labelled": train_loader(self.train_labelled, train, batch_size=bs_l)}
        if len(self.train_unlabelled):
            bs_u = min(self.config.data.unlabelled_batch_size, len(self.train_unlabelled))
            loaders["unlabelled"] = train_loader(self.train_unlabelled, train, batch_size=bs_u)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self):
        return eval_loader(self.val, self.config.train)


# ----- helpers ---------------------------------------------------------------------------------------------------
def to_unit_grey(frames: np.ndarray) -> np.ndarray:
    """(T, H, W[, 3]) frames of any integer/float type -> float32 grey in [0, 1] (as the JPEG training frames)."""
    arr = np.asarray(frames)
    is_8bit = arr.dtype == np.uint8
    arr = arr.astype(np.float32)
    if arr.ndim == 4:
        arr = arr[..., :3].mean(axis=-1)
    if is_8bit:
        return arr / 255.0
    # 10-16-bit cines and float videos: stretch the video's own range (one scale for all frames).
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / max(hi - lo, 1e-6)


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, H, W) float -> (T, 1, size, size) bilinear (what ``AngioFrames`` does to training frames)."""
    return F.interpolate(frames[:, None], size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_frames(
    module: AngioModule, frames: np.ndarray, size: int, frame_batch: int, seed: int = 0, refine: bool | None = None
) -> np.ndarray:
    """Label ids (T, H, W) uint8 at the frames' own size for (T, H, W) float frames in [0, 1]."""
    device = next(module.parameters()).device
    height, width = frames.shape[-2:]
    out = np.zeros(frames.shape[:1] + (height, width), dtype=np.uint8)
    for start in range(0, len(frames), frame_batch):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + frame_batch])).to(device)
        logits = module.predict_logits(resize_frames(chunk.float(), size), refine=refine, seed=seed + start)
        # Resize the class probabilities (bilinear) to the source size, then take the argmax: smoother, and thin
        # structures survive better than nearest-resizing label ids.
        probs = torch.softmax(logits.float(), dim=1)
        if probs.shape[-2:] != (height, width):
            probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
        out[start : start + len(chunk)] = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


SPACING_PATIENT = "PixelSpacing"
SPACING_MAGNIFICATION = "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
SPACING_DETECTOR = "ImagerPixelSpacing"


def dicom_pixel_spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm for areas, and where it came from.

    ``PixelSpacing`` (calibrated, patient plane) is preferred; else ``ImagerPixelSpacing`` (detector plane) divided
    by ``EstimatedRadiographicMagnificationFactor`` when present (an estimate at the isocentre); else the detector
    spacing as is, flagged by its source so areas are labelled detector-plane (they overstate patient areas by the
    magnification, typically 1.2-1.6 in angiography).
    """

    def pair(value: Any) -> tuple[float, float] | None:
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            return None
        return (row, col) if row > 0 and col > 0 else None

    spacing = pair(ds.get("PixelSpacing"))
    if spacing:
        return spacing, SPACING_PATIENT
    imager = pair(ds.get("ImagerPixelSpacing"))
    if imager is None:
        return None, None
    try:
        magnification = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
    except (TypeError, ValueError):
        magnification = 0.0
    if magnification > 0:
        return (imager[0] / magnification, imager[1] / magnification), SPACING_MAGNIFICATION
    return imager, SPACING_DETECTOR


def class_areas(
    labels: np.ndarray,
    names: Sequence[str],
    spacing_mm: Sequence[float] | None,
    frame_times_ms: Sequence[float] | None = None,
    spacing_source: str | None = None,
) -> list[dict[str, Any]]:
    """Per-frame pixel counts per foreground class, and areas when the pixel spacing is known.

    Areas are ``<class>_mm2`` for a patient-plane spacing, ``<class>_mm2_detector`` when ``spacing_source`` is
    plain ``ImagerPixelSpacing`` (detector plane, not corrected for magnification); ``spacing_source`` is recorded
    in a column of its own.
    """
    suffix = "mm2_detector" if spacing_source == SPACING_DETECTOR else "mm2"
    rows = []
    pixel_mm2 = float(spacing_mm[0]) * float(spacing_mm[1]) if spacing_mm else None
    for t, frame in enumerate(labels):
        counts = np.bincount(frame.ravel(), minlength=len(names))
        row: dict[str, Any] = {"frame": t}
        if pixel_mm2 is not None and spacing_source is not None:
            row["spacing_source"] = spacing_source
        if frame_times_ms is not None:
            row["time_ms"] = round(float(frame_times_ms[t]), 3)
        for c in range(1, len(names)):
            row[f"{names[c]}_px"] = int(counts[c])
            if pixel_mm2 is not None:
                row[f"{names[c]}_{suffix}"] = round(int(counts[c]) * pixel_mm2, 4)
        rows.append(row)
    return rows


# Codes of the SEG segments (category, then property type). Vessels: SNOMED CT coronary artery; catheter: SNOMED CT
# catheter. The contrast-filled catheter (MOSXAV's class 2) has no SNOMED CT concept of its own and must not share
# the catheter's code (a reader keys segments by code), so it gets a medml-local code in a private coding scheme
# ("99" prefix, DICOM PS3.3 8.2): 99MEDML / ANGIO-CC "Contrast-filled catheter". Balloons: SNOMED CT device.
SEGMENT_CODES = {
    "vessel": ("91723000", "SCT", "Anatomical Structure", "41801008", "SCT", "Coronary artery"),
    "contrast_catheter": ("260787004", "SCT", "Physical object", "ANGIO-CC", "99MEDML", "Contrast-filled catheter"),
    "catheter": ("260787004", "SCT", "Physical object", "19923001", "SCT", "Catheter"),
    "balloon": ("260787004", "SCT", "Physical object", "49062001", "SCT", "Device"),
}


def segment_table(names: Sequence[str]) -> list[Any]:
    """`medml.io.SegmentSpec` per foreground class, in the MOSXAV colours."""
    from medml.io import SegmentSpec

    table = []
    for label, name in enumerate(names):
        if label == 0:
            continue
        code = SEGMENT_CODES.get(name, ("260787004", "SCT", "Physical object", "49062001", "SCT", "Device"))
        table.append(
            SegmentSpec(
                label=label,
                name=name,
                category=code[:3],
                property_type=code[3:],
                color=tuple(PALETTE[label]) if label < len(PALETTE) else None,
            )
        )
    return table


def colourise(labels: np.ndarray) -> np.ndarray:
    """Label ids -> RGB in the MOSXAV colours (ignored pixels white), through medml.io's palette table."""
    from medml.io.image import as_palette

    return as_palette({**dict(enumerate(PALETTE)), IGNORE_INDEX: (255, 255, 255)})[labels]


# ----- the pipeline ----------------------------------------------------------------------------------------------
@register_pipeline
class AngioPipeline(Pipeline):
    name = "angio"
    summary = "X-ray angiography video: semi-supervised label-latent diffusion segmentation (RNPLL-style, MOSXAV)"
    Config = AngioConfig
    input_kinds = ("dicom_multiframe", "video", "frames")
    predict_batch_size = 1  # one video per batch; frames are batched inside predict_batch

    config: AngioConfig

    # ----- dataset -------------------------------------------------------------------------------------------------
    def check_layout(self, data_dir: Path) -> None:
        check_mosxav_layout(data_dir)

    def prepare(self, data_dir: Path) -> dict[str, Any]:
        self.check_layout(data_dir)
        summary = MOSXAV(data_dir).split_summary()
        labelled, unlabelled = labelled_pools(
            MOSXAV(data_dir),
            self.config.data.labelled_fraction,
            self.config.data.labelled_by,
            self.config.data.split_seed,
        )
        summary.update(n_labelled=len(labelled), n_unlabelled=len(unlabelled))
        return summary

    def datamodule(self, data_dir: Path) -> AngioDataModule:
        return AngioDataModule(Path(data_dir), self.config)

    def synthesize(self, out_dir: Path, seed: int = 0) -> Path:
        from medml.data.synthetic_mosxav import write_synthetic_mosxav

        return write_synthetic_mosxav(out_dir, seed=seed)

    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        from medml.data.synthetic_mosxav import write_synthetic_clinical_angio

        return write_synthetic_clinical_angio(out_dir, seed=seed)

    # ----- model ---------------------------------------------------------------------------------------------------
    def build_module(self, datamodule: L.LightningDataModule | None) -> AngioModule:
        return AngioModule(self.config)

    # ----- prediction ----------------------------------------------------------------------------------------------
    def load_case(self, case: Any) -> dict[str, Any]:
        from medml import io

        video = io.read_video(case)
        frames = np.asarray(video.frames)
        if frames.ndim not in (3, 4) or frames.shape[0] < 1:
            raise UnsupportedFormatError(
                f"expected a video of frames, got an array of shape {frames.shape}", case.paths[0]
            )
        grey = to_unit_grey(frames)
        if not np.isfinite(grey).all():
            raise CorruptFileError("frames hold non-finite values", case.paths[0])
        spacing, spacing_source = None, None
        if case.kind == "dicom_multiframe":
            import pydicom

            # medml.io merges PixelSpacing and ImagerPixelSpacing; areas need to know which one it was.
            spacing, spacing_source = dicom_pixel_spacing(pydicom.dcmread(case.paths[0], stop_before_pixels=True))
        elif video.meta.get("pixel_spacing"):
            row_mm, col_mm = video.meta["pixel_spacing"][:2]
            spacing, spacing_source = (float(row_mm), float(col_mm)), "input metadata"
        return {
            "frames": grey,
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
            {"labels": predict_frames(module, s["frames"], self.config.data.size, ev.frame_batch, ev.seed)}
            for s in samples
        ]

    def write_case(self, case: Any, sample: dict[str, Any], output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        from medml import io

        labels: np.ndarray = output["labels"]
        names = self.config.model.class_names
        palette = [tuple(c) for c in PALETTE[: len(names)]]
        out_dir.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(labels):
            io.write_palette_png(frame, palette, out_dir / "labels" / f"{t:05d}.png")
        spacing, spacing_source = sample.get("spacing"), sample.get("spacing_source")
        frame_ms = float(np.median(np.diff(sample["frame_times_ms"]))) if len(labels) > 1 else 0.0
        row_mm, col_mm = spacing if spacing else (1.0, 1.0)
        # NIfTI 2D+t: (x = columns, y = rows, z = 1, t = frames), pixdim[4] = frame interval in seconds.
        affine = np.diag([col_mm, row_mm, 1.0, 1.0])
        io.write_nifti(
            np.ascontiguousarray(labels),
            affine,
            out_dir / "labels.nii.gz",
            frame_time_s=frame_ms / 1000.0 if frame_ms > 0 else 1.0,
        )
        wrote_seg = False
        if sample["kind"] == "dicom_multiframe":
            import pydicom

            source = pydicom.dcmread(sample["source"])
            io.write_dicom_seg(
                source,
                labels,
                segment_table(names),
                out_dir / "seg.dcm",
                series_description="medml angio segmentation",
                algorithm_name="medml-angio",
            )
            wrote_seg = True
        display = np.round(sample["frames"] * 255).astype(np.uint8)
        io.write_overlay_video(display, labels, palette, out_dir / "overlay.mp4", fps=sample["fps"] or 15.0)
        areas = class_areas(labels, names, spacing, sample["frame_times_ms"], spacing_source)
        io.write_csv(areas, out_dir / "areas.csv")
        row: dict[str, Any] = {
            "kind": sample["kind"],
            "frames": int(labels.shape[0]),
            "height": int(labels.shape[1]),
            "width": int(labels.shape[2]),
            "fps": round(float(sample["fps"]), 3),
            "seg": wrote_seg,
            "refined": bool(self.config.model.refine_at_inference),
            "spacing_source": spacing_source or "",
        }
        for c in range(1, len(names)):
            row[f"mean_{names[c]}_px"] = round(float(np.mean([a[f"{names[c]}_px"] for a in areas])), 2)
        return row

    # ----- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, module: AngioModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        from medml.metrics.segmentation import segmentation_scores

        cfg = self.config
        names = cfg.model.class_names
        fg = names[1:]
        mosxav = MOSXAV(data_dir)
        items = mosxav.items(split, annotated_only=True)  # type: ignore[arg-type]
        frames_ds = AngioFrames(items, size=None, others=cfg.data.others)  # score at the native frame size
        module.eval()
        per_frame: list[dict[str, Any]] = []
        figure_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []
        by_video: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            by_video.setdefault(item.video, []).append(index)
        for video, indices in by_video.items():
            samples = [frames_ds.load_arrays(i) for i in indices]
            images = np.stack([s["image"] for s in samples])
            labels = np.stack([s["label"] for s in samples])
            preds = predict_frames(module, images, cfg.data.size, cfg.eval.frame_batch, cfg.eval.seed)
            for i, pred, target in zip(indices, preds, labels, strict=True):
                scores = segmentation_scores(
                    pred, target, num_classes=cfg.model.num_classes, ignore_index=IGNORE_INDEX, class_names=names
                )
                per_frame.append({"video": video, "frame": items[i].frame_index, "scores": scores})
            if len(figure_rows) < cfg.eval.figure_frames:
                mid = len(indices) // 2
                title = f"{video}/{items[indices[mid]].frame_index:05d}"
                figure_rows.append((images[mid], labels[mid], preds[mid], title))

        def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name in fg:
                out[name] = {}
                for key in ("dice", "iou", "hd95"):
                    vals = [r["scores"][name][key] for r in rows if r["scores"][name]["present"]]
                    vals = [v for v in vals if not np.isnan(v)]
                    out[name][key] = float(np.mean(vals)) if vals else float("nan")
                out[name]["frames_present"] = sum(bool(r["scores"][name]["present"]) for r in rows)
            out["mean_foreground"] = {
                key: float(np.nanmean([out[n][key] for n in fg]))
                if any(not np.isnan(out[n][key]) for n in fg)
                else float("nan")
                for key in ("dice", "iou", "hd95")
            }
            return out

        overall = summarise(per_frame)
        per_video = {video: summarise([r for r in per_frame if r["video"] == video]) for video in by_video}
        metrics = {
            "split": split,
            "frames": len(per_frame),
            "videos": list(by_video),
            "others": cfg.data.others,
            "method": cfg.model.method,
            "refine_at_inference": cfg.model.refine_at_inference,
            "averaging": "per-frame scores (MONAI Dice, IoU, HD95 in pixels) averaged over the frames where "
            "the class is in the target or the prediction; mean_foreground = mean over classes",
            "overall": overall,
            "per_video": per_video,
        }
        out_dir = Path(out_dir)
        write_json(out_dir / "metrics.json", metrics)
        table = []
        for video, summary in [*per_video.items(), ("ALL", overall)]:
            row: dict[str, Any] = {"video": video}
            for name in [*fg, "mean_foreground"]:
                for key in ("dice", "iou", "hd95"):
                    row[f"{name}_{key}"] = round(summary[name][key], 5)
            table.append(row)
        from medml.io import write_csv

        write_csv(table, out_dir / "per_video.csv")
        if figure_rows:
            self._evaluation_figure(figure_rows, out_dir / f"{split}_examples.png")
        headline = {f"{key}_mean": overall["mean_foreground"][key] for key in ("dice", "iou", "hd95")}
        headline.update({f"dice_{name}": overall[name]["dice"] for name in fg})
        return headline

    @staticmethod
    def _evaluation_figure(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
        for r, (image, label, pred, title) in enumerate(rows):
            axes[r, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[r, 0].set_title(title)
            axes[r, 1].imshow(colourise(label.astype(np.uint8)))
            axes[r, 1].set_title("ground truth")
            axes[r, 2].imshow(colourise(pred))
            axes[r, 2].set_title("prediction")
            for ax in axes[r]:
                ax.axis("off")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        return path

    def report_figures(self, run_dir: Path, eval_dir: Path, pred_dir: Path) -> list[Path]:
        return sorted(Path(eval_dir).glob("*.png"))
