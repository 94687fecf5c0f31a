"""COCO detection metrics: perfect detections, a hand-computed 101-point case, agreement with a direct pycocotools
run, and the DENTEX per-level evaluation."""

import contextlib
import io
import json
import math

import numpy as np
import pytest

from medml.metrics.detection import coco_detection_metrics, dentex_metrics, flatten_dentex_metrics


def _random_case(seed: int, n_images: int = 6, num_classes: int = 3):
    rng = np.random.default_rng(seed)
    gt, det = [], []
    for i in range(n_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 80, (n, 2))], axis=1)
        labels = rng.integers(0, num_classes, n)
        gt.append({"image_id": f"img{i}", "boxes": boxes, "labels": labels})
        keep = rng.random(n) < 0.8
        jitter = boxes[keep] + rng.normal(0, 4, (int(keep.sum()), 4))
        extra = rng.uniform(0, 250, (int(rng.integers(0, 4)), 2))
        extra = np.concatenate([extra, extra + 30], axis=1)
        d_boxes = np.concatenate([jitter, extra])
        d_labels = np.concatenate([np.where(rng.random(int(keep.sum())) < 0.85, labels[keep], 0), [1] * len(extra)])
        det.append({"image_id": f"img{i}", "boxes": d_boxes, "labels": d_labels, "scores": rng.random(len(d_boxes))})
    return gt, det


def test_ground_truth_as_detections_scores_one():
    gt, _ = _random_case(0)
    det = [{**g, "scores": np.ones(len(g["labels"]))} for g in gt]
    result = coco_detection_metrics(gt, det, 3, class_names=["a", "b", "c"])
    assert result["AP"] == result["AP50"] == result["AP75"] == result["AR"] == pytest.approx(1.0)
    assert set(result["per_class"]) == {"a", "b", "c"}
    assert all(v["AP"] == pytest.approx(1.0) for v in result["per_class"].values())


def test_hand_computed_101_point_ap():
    """Ranked TP, FP, TP, TP over 3 ground-truth boxes: precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1.
    Interpolated precision is 1 for the 34 recall points 0.00..0.33 and 0.75 for the other 67:
    AP = (34 + 67 * 0.75) / 101."""
    a, b, c = [10, 10, 50, 60], [100, 20, 140, 90], [30, 30, 90, 70]
    gt = [
        {"image_id": 1, "boxes": np.array([a, b]), "labels": np.array([0, 0])},
        {"image_id": 2, "boxes": np.array([c]), "labels": np.array([0])},
    ]
    det = [
        {"image_id": 1, "boxes": np.array([a, b]), "labels": np.array([0, 0]), "scores": np.array([0.9, 0.6])},
        {"image_id": 2, "boxes": np.array([[150, 150, 190, 190], c]), "labels": [0, 0], "scores": [0.8, 0.7]},
    ]
    result = coco_detection_metrics(gt, det, 1)
    expected = (34 + 67 * 0.75) / 101
    assert result["AP"] == pytest.approx(expected) and result["AP50"] == pytest.approx(expected)
    assert result["AR"] == pytest.approx(1.0)
    # IoU 100/150 = 0.667 matches at thresholds 0.50..0.65 (4 of 10): AP 0.4, AP50 1, AP75 0
    single = coco_detection_metrics(
        [{"image_id": 0, "boxes": [[0, 0, 10, 10]], "labels": [0]}],
        [{"image_id": 0, "boxes": [[0, 0, 10, 15]], "labels": [0], "scores": [0.5]}],
        1,
    )
    assert (single["AP"], single["AP50"], single["AP75"], single["AR"]) == pytest.approx((0.4, 1.0, 0.0, 0.4))


def test_equals_a_direct_pycocotools_run(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, det = _random_case(7, n_images=10)
    ids = {g["image_id"]: i + 5 for i, g in enumerate(gt)}
    anns, results = [], []
    for g in gt:
        for box, label in zip(g["boxes"], g["labels"], strict=True):
            x1, y1, x2, y2 = map(float, box)
            anns.append(
                {"id": len(anns) + 1, "image_id": ids[g["image_id"]], "category_id": int(label) + 1,
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            )  # fmt: skip
    for d in det:
        for box, label, score in zip(d["boxes"], d["labels"], d["scores"], strict=True):
            x1, y1, x2, y2 = map(float, box)
            results.append(
                {"image_id": ids[d["image_id"]], "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "score": float(score)}
            )  # fmt: skip
    doc = {
        "images": [{"id": i} for i in ids.values()],
        "annotations": anns,
        "categories": [{"id": c} for c in (1, 2, 3)],
    }
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    (tmp_path / "det.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(coco, coco.loadRes(str(tmp_path / "det.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = coco_detection_metrics(gt, det, 3)
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl")
    reference = [math.nan if v == -1 else v for v in evaluator.stats]
    np.testing.assert_allclose([ours[k] for k in keys], reference, rtol=1e-12)
    assert 0.1 < ours["AP"] < 0.9  # a case that exercises the ranking, not a degenerate one


def test_silent_and_empty_cases(capsys):
    gt, det = _random_case(1)
    coco_detection_metrics(gt, det, 3)
    assert capsys.readouterr().out == ""
    none = coco_detection_metrics(gt, [], 3)
    assert none["AP"] == 0.0 and none["AR"] == 0.0
    empty = coco_detection_metrics([{"image_id": 0, "boxes": np.zeros((0, 4)), "labels": []}], [], 3)
    assert math.isnan(empty["AP"])


def _dentex_case():
    gt = [
        {"image_id": 1, "boxes": [[10, 10, 40, 60], [100, 10, 130, 70]], "labels": [[0, 5, 1], [1, 7, 0]]},
        {"image_id": 2, "boxes": [[50, 80, 80, 140]], "labels": [[2, 3, 2]]},
        {"image_id": 3, "boxes": np.zeros((0, 4)), "labels": np.zeros((0, 3))},
    ]
    return gt


def test_dentex_levels_and_mean():
    gt = _dentex_case()
    perfect = [{**g, "scores": np.ones((len(g["boxes"]), 3))} for g in gt]
    result = dentex_metrics(gt, perfect)
    for level in ("quadrant", "enumeration", "diagnosis", "mean"):
        assert result[level]["AP"] == pytest.approx(1.0) and result[level]["AR"] == pytest.approx(1.0)
    assert result["diagnosis"]["per_class"]["Caries"]["AP"] == pytest.approx(1.0)
    assert math.isnan(result["diagnosis"]["per_class"]["Deep Caries"]["AP"])  # no such box anywhere
    # right boxes and diagnoses, wrong quadrants: quadrant AP 0, the other levels 1, mean (0 + 1 + 1) / 3
    wrong = [{**p, "labels": np.asarray(p["labels"]).reshape(-1, 3) + [[1, 0, 0]]} for p in perfect]
    for w in wrong:
        w["labels"][:, 0] %= 4
    result = dentex_metrics(gt, wrong)
    assert result["quadrant"]["AP"] == 0.0 and result["diagnosis"]["AP"] == pytest.approx(1.0)
    assert result["mean"]["AP"] == pytest.approx(2 / 3)
    flat = flatten_dentex_metrics(result)
    assert flat["mean/AP"] == pytest.approx(2 / 3) and "enumeration/AR" in flat


def test_dentex_scores_rank_by_diagnosis_like_the_challenge():
    """One box per image; quadrant scores rank the right box last, diagnosis scores first. The challenge ranks
    every level by the box's single probability (the diagnosis score); ``score_level=None`` by each level's own."""
    gt = [{"image_id": 1, "boxes": [[0, 0, 10, 10]], "labels": [[0, 0, 0]]}]
    det = [
        {
            "image_id": 1,
            "boxes": [[0, 0, 10, 10], [50, 50, 60, 60]],
            "labels": [[0, 0, 0], [0, 0, 0]],
            "scores": [[0.1, 0.9, 0.9], [0.9, 0.1, 0.1]],
        }
    ]
    assert dentex_metrics(gt, det)["quadrant"]["AP"] == pytest.approx(1.0)
    assert dentex_metrics(gt, det, score_level=None)["quadrant"]["AP"] == pytest.approx(0.5)


def test_levels_a_tier_lacks_are_left_out():
    gt = [{"image_id": 1, "boxes": [[0, 0, 10, 10]], "labels": [[3, -1, -1]]}]
    det = [{"image_id": 1, "boxes": [[0, 0, 10, 10]], "labels": [[3, 2, 1]], "scores": [0.8]}]
    result = dentex_metrics(gt, det)
    assert result["quadrant"]["AP"] == pytest.approx(1.0)
    assert math.isnan(result["enumeration"]["AP"]) and result["mean"]["AP"] == pytest.approx(1.0)
