"""Scoring as the DENTEX challenge scores (spec §3.5) through `medml.metrics.detection.dentex_metrics`: per label
level a COCO GT whose category is that level's label, pycocotools COCOeval (bbox, IoU .50:.95, maxDets 100); AP,
AP50, AP75, AR@100 per level and their mean."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medml.errors import ConfigError
from medml.metrics.detection import dentex_metrics
from medml.pipelines.dental.config import LEVELS
from medml.utils.figures import figure, save_figure
from medml.utils.files import write_json


def as_gt_det(images: Sequence[Any], detections: Mapping[str, Mapping[str, np.ndarray]]):
    """DentexImage-like images and ``case id -> detections`` as the per-image records of `dentex_metrics`."""
    gt = [{"image_id": i, "boxes": im.boxes, "labels": im.labels} for i, im in enumerate(images)]
    det = [
        {"image_id": i, **{k: detections[im.case_id][k] for k in ("boxes", "labels", "scores")}}
        for i, im in enumerate(images)
        if im.case_id in detections
    ]
    return gt, det


def all_levels(images: Sequence[Any], detections: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Per level (AP, AP50, AP75, AR@100, per class) and the challenge's mean over the levels. Each box carries
    one score (the ranking level's probability, the diagnosis one at evaluation), as a challenge submission does."""
    return dentex_metrics(*as_gt_det(images, detections))


def evaluate_split(config, module, data_dir: Path, split: str, out_dir: Path) -> dict[str, Any]:
    """Detect on ``split`` of the fully labelled tier (test = ``validation_triple.json``), score every level, write
    ``metrics.json``, ``detections.json`` (COCO results with the three category ids) and a per-class AP figure."""
    from medml.pipelines.dental.data import DentexDetection, split_images

    try:
        images = split_images(data_dir, config, split)
    except ValueError:
        raise ConfigError(f"--split {split}: the dental splits are train, val and test") from None
    if not images:
        raise ConfigError(f"split '{split}' of the fully labelled tier has no images", data_dir)
    dets = dict(module.predict_dataset(DentexDetection(images, config, train=False), level=2))
    levels = all_levels(images, dets)
    result = {"levels": {lv: levels[lv] for lv in LEVELS}, "mean": levels["mean"]}
    result.update(split=split, n_images=len(images), n_boxes=int(sum(len(im.boxes) for im in images)))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", result)
    write_json(out_dir / "detections.json", coco_results(images, dets))
    per_class_figure(
        result, out_dir / "ap_per_class.png", title=f"HierarchicalDet, DENTEX {split} ({len(images)} images)"
    )
    headline = {f"{lv}_{k}": result["levels"][lv][k] for lv in LEVELS for k in ("AP", "AP50", "AP75", "AR")}
    headline.update({f"mean_{k}": v for k, v in result["mean"].items()})
    return headline


def coco_results(images, dets) -> list[dict[str, Any]]:
    """COCO results rows with the three label levels (``category_id_1/2/3``, as HierarchicalDet writes them)."""
    rows = []
    for i, im in enumerate(images):
        det = dets.get(im.case_id)
        if det is None:
            continue
        for box, score, lab, prob in zip(det["boxes"], det["scores"], det["labels"], det["probs"]):
            x1, y1, x2, y2 = (round(float(v), 2) for v in box)
            rows.append(
                {
                    "image_id": getattr(im, "image_id", i),
                    "case_id": im.case_id,
                    "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                    "category_id_1": int(lab[0]),
                    "category_id_2": int(lab[1]),
                    "category_id_3": int(lab[2]),
                    "level_scores": [round(float(p), 5) for p in prob],
                }
            )
    return rows


def per_class_figure(result: dict[str, Any], path: Path, title: str) -> Path:
    from medml.data.dentex import CLASS_NAMES

    fig = figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [4, 8, 4]})
    for ax, level in zip(axes, LEVELS):
        names = list(CLASS_NAMES[level])
        per_class = result["levels"][level]["per_class"]
        vals = [per_class[n]["AP"] for n in names]
        ax.bar(range(len(vals)), [0.0 if math.isnan(v) else v for v in vals], color="C0")
        ax.set_xticks(range(len(vals)), names, rotation=30 if level == "diagnosis" else 0, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{level}: AP {result['levels'][level]['AP']:.3f}", fontsize=9)
    axes[0].set_ylabel("COCO AP (IoU .50:.95)")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)
