"""Scoring as the DENTEX challenge scores (spec §3.5): per label level a COCO GT whose category is that level's
label, pycocotools COCOeval (bbox, IoU .50:.95, maxDets 100); AP, AP50, AP75, AR@100 per level and their mean."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medml.errors import ConfigError
from medml.pipelines.dental.config import LEVELS, NUM_CLASSES
from medml.utils.figures import save_figure
from medml.utils.files import write_json


def level_metrics(images: Sequence[Any], detections: Mapping[str, Mapping[str, np.ndarray]], level: int) -> dict:
    """COCO AP/AP50/AP75/AR@100 of ``detections`` (case id -> boxes xyxy, scores, labels (M, 3)) at ``level``
    against ``images`` (DentexImage-like: case_id, width, height, boxes, labels); boxes without that level's label
    are left out of the GT."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": c} for c in range(NUM_CLASSES[level])]}
    results = []
    for i, im in enumerate(images):
        gt["images"].append({"id": i, "width": int(im.width), "height": int(im.height)})
        for box, lab in zip(np.asarray(im.boxes).reshape(-1, 4), np.asarray(im.labels).reshape(-1, 3)):
            if lab[level] < 0:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "category_id": int(lab[level]),
                    "iscrowd": 0,
                }
            )
        det = detections.get(im.case_id)
        if det is None:
            continue
        for box, score, lab in zip(det["boxes"], det["scores"], det["labels"]):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {"image_id": i, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score), "category_id": int(lab[level])}
            )
    if not gt["annotations"] or not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0, "per_class_AP": [None] * NUM_CLASSES[level]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = [max(0.0, float(v)) for v in ev.stats]
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU, recall, class) at all areas, maxDets 100
    per_class = []
    for c in range(NUM_CLASSES[level]):
        p = precision[:, :, c]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else None)  # None: class absent from the GT
    return {"AP": s[0], "AP50": s[1], "AP75": s[2], "AR": s[8], "per_class_AP": per_class}


def all_levels(images, detections) -> dict[str, Any]:
    """Per level and the challenge's aggregate (mean over the three levels)."""
    per = {name: level_metrics(images, detections, k) for k, name in enumerate(LEVELS)}
    mean = {key: float(np.mean([per[n][key] for n in LEVELS])) for key in ("AP", "AP50", "AP75", "AR")}
    return {"levels": per, "mean": mean}


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
    result = all_levels(images, dets)
    result.update(split=split, n_images=len(images), n_boxes=int(sum(len(im.boxes) for im in images)))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", result)
    write_json(out_dir / "detections.json", coco_results(images, dets))
    per_class_figure(result, out_dir / "ap_per_class.png", title=f"HierarchicalDet, DENTEX {split} ({len(images)} images)")
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
    import matplotlib.pyplot as plt

    from medml.data.dentex import CLASS_NAMES

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), gridspec_kw={"width_ratios": [4, 8, 4]})
    for ax, level in zip(axes, LEVELS):
        vals = result["levels"][level]["per_class_AP"]
        names = list(CLASS_NAMES[level])
        ax.bar(range(len(vals)), [v or 0.0 for v in vals], color="C0")
        ax.set_xticks(range(len(vals)), names, rotation=30 if level == "diagnosis" else 0, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{level}: AP {result['levels'][level]['AP']:.3f}", fontsize=9)
    axes[0].set_ylabel("COCO AP (IoU .50:.95)")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)
