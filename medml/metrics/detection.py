"""COCO box detection metrics through pycocotools, and the DENTEX challenge's per-level evaluation.

`coco_detection_metrics` builds the COCO ground truth and results from plain per-image arrays and runs the standard
``COCOeval`` (bbox, IoU 0.50:0.95, 101-point interpolated precision, maxDets 1/10/100), so its numbers are
pycocotools' own. `dentex_metrics` does what the DENTEX evaluation container does (spec §3.5): for each label level
(quadrant, tooth position, diagnosis) it relabels the same abnormal-tooth boxes with that level's class, evaluates,
and reports AP = stats[0], AP50 = stats[1], AP75 = stats[2], AR = stats[8] (AR@100, all areas), then the mean of each
metric over the levels. Values are fractions in [0, 1]; NaN where pycocotools has nothing to measure (-1).

One deliberate difference from feeding a JSON file to pycocotools: annotation ids are always numbered from 1, since
COCOeval takes a matched ground-truth id of 0 for "unmatched" and would count that true positive as a false positive.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LEVEL_NAMES = ("quadrant", "enumeration", "diagnosis")
METRICS = ("AP", "AP50", "AP75", "AR")
# COCOeval.stats index of each reported metric
_STATS = {
    "AP": 0,
    "AP50": 1,
    "AP75": 2,
    "APs": 3,
    "APm": 4,
    "APl": 5,
    "AR1": 6,
    "AR10": 7,
    "AR": 8,
    "ARs": 9,
    "ARm": 10,
    "ARl": 11,
}


def _nan(value: float) -> float:
    value = float(value)
    return math.nan if value < 0 else value


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_objects(
    gt: Sequence[Mapping[str, Any]], det: Sequence[Mapping[str, Any]], num_classes: int
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[Any, int]]:
    """The COCO ground-truth dict and results list for pycocotools, and the map image id -> COCO image id.

    Ground-truth labels < 0 (a level the image does not annotate) and detection labels outside ``[0, num_classes)``
    are left out; every image of ``gt`` is an image of the evaluation (so false positives on empty images count).
    """
    image_ids: dict[Any, int] = {}
    images, annotations = [], []
    for item in gt:
        key = item["image_id"]
        if key in image_ids:
            raise ValueError(f"image_id {key!r} appears twice in the ground truth")
        image_ids[key] = len(image_ids) + 1
        entry = {"id": image_ids[key]}
        if "width" in item and "height" in item:
            entry.update(width=int(item["width"]), height=int(item["height"]))
        images.append(entry)
        boxes = _xywh(item["boxes"])
        labels = np.asarray(item["labels"], np.int64).reshape(-1)
        if len(labels) != len(boxes):
            raise ValueError(f"image {key!r}: {len(boxes)} boxes but {len(labels)} labels")
        crowd = np.asarray(item.get("iscrowd", np.zeros(len(boxes))), bool).reshape(-1)
        for box, label, is_crowd in zip(boxes, labels, crowd, strict=True):
            if not 0 <= label < num_classes:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,  # never 0: COCOeval reads a matched gt id of 0 as unmatched
                    "image_id": image_ids[key],
                    "category_id": int(label),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(is_crowd),
                }
            )
    results = []
    for item in det:
        key = item["image_id"]
        if key not in image_ids:
            raise ValueError(f"detections for image_id {key!r}, which the ground truth does not hold")
        boxes = _xywh(item["boxes"])
        labels = np.asarray(item["labels"], np.int64).reshape(-1)
        scores = np.asarray(item["scores"], np.float64).reshape(-1)
        if not len(labels) == len(scores) == len(boxes):
            raise ValueError(f"image {key!r}: boxes, labels and scores differ in length")
        for box, label, score in zip(boxes, labels, scores, strict=True):
            if 0 <= label < num_classes:
                results.append(
                    {
                        "image_id": image_ids[key],
                        "category_id": int(label),
                        "bbox": [float(v) for v in box],
                        "score": float(score),
                    }
                )
    categories = [{"id": c, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, results, image_ids


def run_cocoeval(gt_dict: Mapping[str, Any], results: Sequence[Mapping[str, Any]], max_dets: int = 100) -> Any:
    """pycocotools COCOeval (bbox) on a ground-truth dict and a results list, evaluated and accumulated, silently."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_gt = COCO()
        coco_gt.dataset = {k: list(v) for k, v in gt_dict.items()}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(list(results)) if results else COCO()
        if not results:  # loadRes refuses an empty list; an empty results set still has to score 0
            coco_dt.dataset = {
                "images": list(gt_dict["images"]),
                "annotations": [],
                "categories": gt_dict["categories"],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _per_class(evaluator: Any, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """AP, AP50, AP75 and AR@maxDets(last), all areas, per category, from COCOeval's accumulated arrays."""
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    recall = evaluator.eval["recall"]  # [T, K, A, M]
    iou = np.asarray(evaluator.params.iouThrs)
    out = {}
    for k, cat in enumerate(evaluator.params.catIds):

        def mean(values: np.ndarray) -> float:
            valid = values[values > -1]
            return float(valid.mean()) if valid.size else math.nan

        p = precision[:, :, k, 0, -1]
        out[class_names[cat] if cat < len(class_names) else str(cat)] = {
            "AP": mean(p),
            "AP50": mean(p[np.isclose(iou, 0.5)]),
            "AP75": mean(p[np.isclose(iou, 0.75)]),
            "AR": mean(recall[:, k, 0, -1]),
        }
    return out


def coco_detection_metrics(
    gt: Sequence[Mapping[str, Any]],
    det: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO box metrics of class-labelled detections.

    Args:
        gt: per image ``{"image_id", "boxes" (N, 4) xyxy pixels, "labels" (N,) int}`` (labels < 0 are ignored;
            optional ``"iscrowd"`` (N,)).
        det: per image ``{"image_id", "boxes", "labels", "scores" (N,)}``; images without detections may be absent.
        num_classes: classes are ``0 .. num_classes - 1``.
        class_names: names for ``per_class`` (default the class indices as strings).
        max_dets: detections kept per image (highest scores), COCO's 100.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl", "per_class":
        {name: {AP, AP50, AP75, AR}}, "num_gt", "num_det"}`` (COCOeval.stats in order); AR is AR@``max_dets``.
    """
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    gt_dict, results, _ = coco_objects(gt, det, num_classes)
    out: dict[str, Any] = {"num_gt": len(gt_dict["annotations"]), "num_det": len(results)}
    if not gt_dict["annotations"]:
        out.update({key: math.nan for key in _STATS})
        out["per_class"] = {name: {m: math.nan for m in METRICS} for name in names}
        return out
    evaluator = run_cocoeval(gt_dict, results, max_dets)
    out.update({key: _nan(evaluator.stats[i]) for key, i in _STATS.items()})
    out["per_class"] = _per_class(evaluator, names)
    return out


def dentex_metrics(
    gt: Sequence[Mapping[str, Any]],
    det: Sequence[Mapping[str, Any]],
    *,
    score_level: int | None = 2,
    num_classes: Sequence[int] = (4, 8, 4),
    class_names: Sequence[Sequence[str]] | None = None,
    levels: Sequence[str] = LEVEL_NAMES,
) -> dict[str, Any]:
    """The DENTEX challenge's evaluation: COCO metrics per label level on the same boxes, and their mean.

    Args:
        gt: per image ``{"image_id", "boxes" (N, 4) xyxy, "labels" (N, 3) quadrant, tooth, diagnosis}`` (-1 where a
            level is not annotated: those boxes are left out of that level).
        det: per image ``{"image_id", "boxes", "labels" (N, 3), "scores" (N,) or (N, 3)}``.
        score_level: with (N, 3) scores, the column every level ranks by: 2 (the diagnosis probability) as in the
            challenge, whose submission carries one probability per box; None ranks each level by its own column.
        num_classes: classes per level.
        class_names: names per level for ``per_class`` (default `medml.data.dentex.CLASS_NAMES`).
        levels: level names, in column order.

    Returns:
        ``{level: {"AP", "AP50", "AP75", "AR", "per_class", "num_gt", "num_det"}, ..., "mean": {"AP", "AP50", "AP75",
        "AR"}}``; a level without any ground truth is NaN and left out of the mean.
    """
    if class_names is None:
        from medml.data.dentex import CLASS_NAMES

        class_names = [CLASS_NAMES[level] for level in LEVEL_NAMES]
    out: dict[str, Any] = {}
    for k, level in enumerate(levels):
        gt_k = [
            {
                "image_id": g["image_id"],
                "boxes": g["boxes"],
                "labels": np.asarray(g["labels"], np.int64).reshape(-1, len(levels))[:, k],
            }
            for g in gt
        ]
        det_k = []
        for d in det:
            scores = np.asarray(d["scores"], np.float64)
            if scores.ndim == 2:
                scores = scores[:, k if score_level is None else score_level]
            det_k.append(
                {
                    "image_id": d["image_id"],
                    "boxes": d["boxes"],
                    "labels": np.asarray(d["labels"], np.int64).reshape(-1, len(levels))[:, k],
                    "scores": scores,
                }
            )
        result = coco_detection_metrics(gt_k, det_k, num_classes[k], class_names=class_names[k])
        out[level] = {key: result[key] for key in (*METRICS, "per_class", "num_gt", "num_det")}
    out["mean"] = {}
    for metric in METRICS:
        values = [out[level][metric] for level in levels if not math.isnan(out[level][metric])]
        out["mean"][metric] = float(np.mean(values)) if values else math.nan
    return out


def flatten_dentex_metrics(result: Mapping[str, Any], per_class: bool = False) -> dict[str, float]:
    """``{"quadrant/AP50": ..., "mean/AP": ..., ["diagnosis/Caries/AP": ...]}`` for loggers and CSV rows."""
    flat: dict[str, float] = {}
    for level, values in result.items():
        for metric in METRICS:
            flat[f"{level}/{metric}"] = float(values[metric])
        if per_class and "per_class" in values:
            for name, metrics in values["per_class"].items():
                for metric in METRICS:
                    flat[f"{level}/{name}/{metric}"] = float(metrics[metric])
    return flat
