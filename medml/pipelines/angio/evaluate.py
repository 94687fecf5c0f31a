"""Evaluation of the ``angio`` pipeline: per-frame Dice, IoU and HD95 on a MOSXAV split, the temporal consistency
of the predictions along each video, per-video tables and the example figure.

Conventions: a class is scored on the frames where it is in the ground truth or the prediction (Dice/IoU 0 when it
is only in one of them). HD95 of a missed or hallucinated class is not dropped but set to a penalty, by default the
frame diagonal in pixels (the largest distance a boundary point can have in the frame; ``eval.hd95_missing_penalty``
overrides it), so a method that misses a class scores worse on HD95, not better. Temporal consistency: for each pair
of consecutive annotated frames of a video, the mean foreground Dice between the two *predictions* and between the
two *ground truths*; their ratio near 1 means the predictions change as much as the anatomy does (flicker gives a
prediction agreement below the ground truth's).

RNPLL publishes no per-class MOSXAV numbers to compare with; the model card lists the literature figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medml.data.mosxav import IGNORE_INDEX, MOSXAV, AngioFrames
from medml.io import write_csv
from medml.metrics.segmentation import segmentation_scores
from medml.pipelines.angio.config import AngioConfig
from medml.pipelines.angio.module import AngioModule
from medml.pipelines.angio.outputs import class_legend, colourise
from medml.transforms.angio import frame_preprocessing
from medml.utils.figures import figure, save_figure
from medml.utils.files import write_json

SCORES = ("dice", "iou", "hd95")
FigureRow = tuple[np.ndarray, np.ndarray, np.ndarray, str]  # frame, ground truth, prediction, title


def evaluate_split(
    cfg: AngioConfig, module: AngioModule, data_dir: Path, split: str, out_dir: Path
) -> dict[str, float]:
    """Score ``split`` at the native frame size; write ``metrics.json``, ``per_video.csv`` and the figure."""
    names = cfg.model.class_names
    items = MOSXAV(data_dir).items(split, annotated_only=True)  # type: ignore[arg-type]
    frames_ds = AngioFrames(items, size=None, others=cfg.data.others)  # score at the native frame size
    preprocess = frame_preprocessing(cfg.data.size, native_key="frames")
    per_frame: list[dict[str, Any]] = []
    figure_rows: list[FigureRow] = []
    by_video: dict[str, list[int]] = {}
    temporal: dict[str, dict[str, float]] = {}
    for index, item in enumerate(items):
        by_video.setdefault(item.video, []).append(index)
    with module.evaluating():
        for video, indices in by_video.items():
            samples = [frames_ds.read_arrays(i) for i in indices]
            labels = np.stack([s["label"] for s in samples])
            # The video goes through the preprocessing of clinical cines (load_case), which is that of training.
            prepared = preprocess({"image": np.stack([s["image"] for s in samples])})
            images = prepared["frames"]
            preds = module.segment_frames(prepared["image"], labels.shape[-2:], cfg.eval.frame_batch, cfg.eval.seed)
            penalty = cfg.eval.hd95_missing_penalty or float(np.hypot(*labels.shape[-2:]))
            for i, pred, target in zip(indices, preds, labels, strict=True):
                scores = segmentation_scores(
                    pred, target, num_classes=cfg.model.num_classes, ignore_index=IGNORE_INDEX, class_names=names
                )
                penalise_missing_hd95(scores, names[1:], penalty)
                per_frame.append({"video": video, "frame": items[i].frame_index, "scores": scores})
            frame_ids = [items[i].frame_index for i in indices]
            temporal[video] = temporal_consistency(preds, labels, frame_ids, cfg.model.num_classes)
            if len(figure_rows) < cfg.eval.figure_frames:
                mid = len(indices) // 2
                title = f"{video}/{items[indices[mid]].frame_index:05d}"
                figure_rows.append((images[mid], labels[mid], preds[mid], title))

    fg = names[1:]
    overall = summarise(per_frame, fg)
    per_video = {video: summarise([r for r in per_frame if r["video"] == video], fg) for video in by_video}
    out_dir = Path(out_dir)
    write_json(
        out_dir / "metrics.json",
        {
            "split": split,
            "frames": len(per_frame),
            "videos": list(by_video),
            "others": cfg.data.others,
            "method": cfg.model.method,
            "predictor": "diffusion" if module.diffusion_predicts else "segmenter",
            "shared_video_noise": cfg.eval.shared_video_noise,
            "averaging": "per-frame scores (MONAI Dice, IoU, HD95 in pixels) averaged over the frames where "
            "the class is in the target or the prediction; mean_foreground = mean over classes",
            "hd95_missing": "a class in only one of prediction and ground truth scores HD95 = "
            + (f"{cfg.eval.hd95_missing_penalty} px" if cfg.eval.hd95_missing_penalty else "the frame diagonal"),
            "overall": overall,
            "temporal_consistency": summarise_temporal(temporal),
            "per_video": per_video,
            "temporal_per_video": temporal,
        },
    )
    write_csv(video_table(per_video, overall, fg), out_dir / "per_video.csv")
    if figure_rows:
        evaluation_figure(figure_rows, out_dir / f"{split}_examples.png")
    headline = {f"{key}_mean": overall["mean_foreground"][key] for key in SCORES}
    headline.update({f"temporal_{k}": v for k, v in summarise_temporal(temporal).items()})
    headline.update({f"dice_{name}": overall[name]["dice"] for name in fg})
    return headline


def penalise_missing_hd95(scores: dict[str, Any], fg: list[str], penalty: float) -> None:
    """In place: HD95 of a class present in exactly one of prediction and ground truth (Dice 0, HD95 NaN from
    `segmentation_scores`) becomes ``penalty``; the frame's mean is recomputed over the present classes."""
    for name in fg:
        entry = scores[name]
        if entry["present"] and np.isnan(entry["hd95"]):
            entry["hd95"] = float(penalty)
    present = [scores[n]["hd95"] for n in fg if scores[n]["present"]]
    if present:
        scores["mean"]["hd95"] = float(np.mean(present))


def temporal_consistency(
    preds: np.ndarray, labels: np.ndarray, frame_ids: list[int], num_classes: int
) -> dict[str, float]:
    """Mean foreground Dice between consecutive annotated frames (adjacent frame numbers only), for the predictions
    and for the ground truth, and their ratio (NaN without a pair of adjacent annotated frames)."""
    pred_agree, gt_agree = [], []
    for k in range(len(frame_ids) - 1):
        if frame_ids[k + 1] - frame_ids[k] != 1:
            continue
        gt_a, gt_b = labels[k], labels[k + 1]
        valid = (gt_a != IGNORE_INDEX) & (gt_b != IGNORE_INDEX)
        pred_agree.append(_mean_fg_dice(preds[k], preds[k + 1], valid, num_classes))
        gt_agree.append(_mean_fg_dice(gt_a, gt_b, valid, num_classes))
    pairs = [(p, g) for p, g in zip(pred_agree, gt_agree, strict=True) if not (np.isnan(p) or np.isnan(g))]
    if not pairs:
        return {"prediction_agreement": float("nan"), "ground_truth_agreement": float("nan"), "ratio": float("nan")}
    pred_mean, gt_mean = float(np.mean([p for p, _ in pairs])), float(np.mean([g for _, g in pairs]))
    return {
        "prediction_agreement": pred_mean,
        "ground_truth_agreement": gt_mean,
        "ratio": pred_mean / gt_mean if gt_mean > 0 else float("nan"),
        "pairs": len(pairs),
    }


def _mean_fg_dice(a: np.ndarray, b: np.ndarray, valid: np.ndarray, num_classes: int) -> float:
    scores = []
    for c in range(1, num_classes):
        in_a, in_b = (a == c) & valid, (b == c) & valid
        total = int(in_a.sum() + in_b.sum())
        if total:
            scores.append(2.0 * int((in_a & in_b).sum()) / total)
    return float(np.mean(scores)) if scores else float("nan")


def summarise_temporal(temporal: dict[str, dict[str, float]]) -> dict[str, float]:
    """Pair-weighted mean over videos of the temporal agreements (and the ratio of the means)."""
    rows = [t for t in temporal.values() if t.get("pairs")]
    if not rows:
        return {"prediction_agreement": float("nan"), "ground_truth_agreement": float("nan"), "ratio": float("nan")}
    weights = np.array([t["pairs"] for t in rows], dtype=float)
    pred = float(np.average([t["prediction_agreement"] for t in rows], weights=weights))
    gt = float(np.average([t["ground_truth_agreement"] for t in rows], weights=weights))
    return {"prediction_agreement": pred, "ground_truth_agreement": gt, "ratio": pred / gt if gt > 0 else float("nan")}


def summarise(rows: list[dict[str, Any]], fg: list[str]) -> dict[str, Any]:
    """Mean of each score per class over the frames where the class is present (NaN scores left out)."""
    out: dict[str, Any] = {}
    for name in fg:
        out[name] = {}
        for key in SCORES:
            vals = [r["scores"][name][key] for r in rows if r["scores"][name]["present"]]
            vals = [v for v in vals if not np.isnan(v)]
            out[name][key] = float(np.mean(vals)) if vals else float("nan")
        out[name]["frames_present"] = sum(bool(r["scores"][name]["present"]) for r in rows)
    out["mean_foreground"] = {
        key: float(np.nanmean([out[n][key] for n in fg]))
        if any(not np.isnan(out[n][key]) for n in fg)
        else float("nan")
        for key in SCORES
    }
    return out


def video_table(per_video: dict[str, Any], overall: dict[str, Any], fg: list[str]) -> list[dict[str, Any]]:
    """One row per video and an ``ALL`` row: every score of every class and of their mean."""
    table = []
    for video, summary in [*per_video.items(), ("ALL", overall)]:
        row: dict[str, Any] = {"video": video}
        for name in [*fg, "mean_foreground"]:
            for key in SCORES:
                row[f"{name}_{key}"] = round(summary[name][key], 5)
        table.append(row)
    return table


def evaluation_figure(rows: list[FigureRow], path: Path) -> Path:
    """Frame, ground truth and prediction side by side, one row per example frame."""
    fig = figure(figsize=(9, 3 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (image, label, pred, title) in enumerate(rows):
        axes[r, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(title)
        axes[r, 1].imshow(colourise(label.astype(np.uint8)))
        axes[r, 1].set_title("ground truth")
        axes[r, 2].imshow(colourise(pred))
        axes[r, 2].set_title("prediction")
        for ax in axes[r]:
            ax.axis("off")
    class_legend(fig, [a for row in rows for a in row[1:3]])
    return save_figure(fig, path, dpi=80, tight=False)
