"""The dental pipeline end to end on the synthetic DENTEX (the session's shared tiny demo run): the three hierarchy
stages with prior-box injection, learning, evaluation equal to pycocotools on the written detections, prediction on
PNG/JPEG/DICOM panoramics, and the recipes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from medml.config import RECIPES_DIR, load_config, resolve_recipe
from medml.data import dentex
from medml.errors import ConfigError
from medml.pipelines.dental.config import DentalConfig
from medml.registry import get_pipeline


@pytest.fixture(scope="module")
def dental_demo(tiny_demo):
    return tiny_demo("dental")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_registered_with_paper_defaults():
    cls = get_pipeline("dental")
    assert load_config(cls.Config, RECIPES_DIR / "dental" / "paper.yaml") == cls.Config()
    cfg = cls.Config()
    assert [s.tier for s in cfg.stages] == ["quadrant", "enumeration", "diagnosis"]
    assert (cfg.model.num_proposals, cfg.train.optim.lr, cfg.train.batch_size, cfg.train.grad_clip) == (
        1000,
        2.5e-5,
        2,
        1.0,
    )
    with pytest.raises(ConfigError, match="fully labelled tier only"):
        load_config(DentalConfig, None, ["model.arch=fasterrcnn"])
    with pytest.raises(ConfigError, match="hierarchy.inject"):
        load_config(DentalConfig, None, ["hierarchy.inject=sometimes"])


def test_three_stages_each_from_the_previous_with_injected_priors(dental_demo):
    run = dental_demo.run_dir
    stages = sorted(p.name for p in (run / "stages").iterdir())
    assert stages == ["00-quadrant", "01-enumeration", "02-diagnosis"]
    rows = _rows(run / "metrics.csv")
    by_stage = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append(r)
    # the quadrant stage supervises one level, enumeration two, diagnosis three; nothing else gets a class loss
    assert all(float(r.get("train_loss_ce_1") or 0) == 0 for r in by_stage["quadrant"])
    assert any(float(r.get("train_loss_ce_1") or 0) > 0 for r in by_stage["enumeration"])
    assert all(float(r.get("train_loss_ce_2") or 0) == 0 for r in by_stage["enumeration"])
    assert any(float(r.get("train_loss_ce_2") or 0) > 0 for r in by_stage["diagnosis"])
    # stages after the first got the previous stage's detections (score >= hierarchy.prior_score) as prior boxes
    enum_priors = [float(r["prior_boxes_per_image"]) for r in by_stage["enumeration"] if r.get("prior_boxes_per_image")]
    assert enum_priors and enum_priors[0] > 0
    assert any(r.get("prior_boxes_per_image") for r in by_stage["diagnosis"])
    assert not any(r.get("prior_boxes_per_image") for r in by_stage["quadrant"])


def test_tiny_recipe_reaches_quadrant_ap50_half_and_is_scored_per_level(dental_demo):
    """The issue's goal: the tiny recipe trained on CPU reaches quadrant AP50 >= 0.5 on the synthetic test split
    (training seeds 0, 1, 2, 42: 0.71-0.83; model card, tiny section). Every stage's loss falls, and the evaluation
    reports the challenge's 12 numbers and their mean."""
    rows = _rows(dental_demo.run_dir / "metrics.csv")
    for stage in ("quadrant", "enumeration", "diagnosis"):
        losses = [float(r["train_loss"]) for r in rows if r["stage"] == stage and r.get("train_loss")]
        assert len(losses) >= 2 and min(losses[-2:]) < 0.95 * losses[0], (stage, losses)
    metrics = json.loads((dental_demo.eval_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_images"] > 0
    levels = metrics["levels"]
    assert set(levels) == {"quadrant", "enumeration", "diagnosis"}
    assert levels["quadrant"]["AP50"] >= 0.5, levels["quadrant"]
    for key in ("AP", "AP50", "AP75", "AR"):
        assert 0.0 <= levels["quadrant"][key] <= 1.0
        mean = np.mean([levels[lv][key] for lv in levels])
        assert metrics["mean"][key] == pytest.approx(mean)
    assert (dental_demo.eval_dir / "ap_per_class.png").stat().st_size > 0


def test_evaluate_equals_pycocotools_on_the_written_detections(dental_demo):
    """The challenge's quadrant AP, recomputed straight from detections.json and validation_triple.json."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    metrics = json.loads((dental_demo.eval_dir / "metrics.json").read_text())
    dets = json.loads((dental_demo.eval_dir / "detections.json").read_text())
    images = dentex.load_dentex(dental_demo.data_dir, tiers=["validation"])["validation"]
    index = {im.case_id: i + 1 for i, im in enumerate(images)}
    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in range(4)]}
    for im in images:
        gt["images"].append({"id": index[im.case_id], "width": im.width, "height": im.height})
        for box, lab in zip(im.boxes, im.labels):
            x1, y1, x2, y2 = map(float, box)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": index[im.case_id],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "category_id": int(lab[0]),
                    "iscrowd": 0,
                }
            )
    results = [
        {"image_id": index[d["case_id"]], "bbox": d["bbox"], "score": d["score"], "category_id": d["category_id_1"]}
        for d in dets
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # detections.json rounds boxes to 0.01 px and scores to 1e-5
    assert metrics["levels"]["quadrant"]["AP"] == pytest.approx(ev.stats[0], abs=2e-3)
    assert metrics["levels"]["quadrant"]["AP50"] == pytest.approx(ev.stats[1], abs=2e-3)


def test_prediction_on_png_jpeg_and_dicom_panoramics(dental_demo):
    pred = dental_demo.pred_dir
    rows = {r["case"]: r for r in _rows(pred / "predictions.csv")}
    kinds = {r["kind"] for r in rows.values()}
    assert {"image", "dicom_image"} <= kinds
    for case, row in rows.items():
        folder = pred / case
        assert (folder / "overlay.png").stat().st_size > 0
        sub = json.loads((folder / "submission.json").read_text())
        assert sub["type"] == "Multiple 2D bounding boxes"
        assert (folder / "findings_sr.dcm").exists() == (row["kind"] == "dicom_image")
        records = json.loads((folder / "detections.json").read_text())
        assert isinstance(records, list | dict)


def test_tiny_recipe_is_small():
    cfg = load_config(DentalConfig, resolve_recipe("dental", "tiny"))
    assert cfg.model.weights == "none" and cfg.model.backbone == "resnet_small"
    assert cfg.data.min_size <= 160 and cfg.model.num_proposals <= 300
