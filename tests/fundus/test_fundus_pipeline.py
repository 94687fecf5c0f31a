"""End-to-end tests of the fundus pipeline on the session's shared tiny run (``tiny_demo("fundus")``: synthetic
REFUGE -> tiny recipe on CPU -> clinical folder -> predict -> evaluate), so these tests train nothing themselves."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import urllib.error
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models

from medml.config import load_config
from medml.demo import DemoRun
from medml.errors import ConfigError
from medml.pipelines.fundus.config import FundusStage
from medml.pipelines.fundus.model import GlaucomaClassifier
from medml.pipelines.fundus.module import FundusModule
from medml.registry import get_pipeline

RECIPES = Path(__file__).resolve().parents[2] / "pipelines" / "fundus"


@pytest.fixture(scope="session")
def fundus_demo(tiny_demo) -> DemoRun:
    return tiny_demo("fundus")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_registered_with_paper_defaults():
    cls = get_pipeline("fundus")
    assert cls.input_kinds == ("image", "dicom_image")
    assert load_config(cls.Config, RECIPES / "paper.yaml") == cls.Config()
    tiny = load_config(cls.Config, RECIPES / "tiny.yaml")
    assert [s.mode for s in tiny.stages] == ["locate", "segment", "classify"]
    assert tiny.model.weights == "none"  # tests and the demo never download


def test_stage_modes_decide_trainable_networks():
    cls = get_pipeline("fundus")
    module = FundusModule(load_config(cls.Config, RECIPES / "tiny.yaml"))
    module.start_stage(FundusStage(name="s", mode="segment"))
    trainable = {n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"segmenter"}
    module.start_stage(FundusStage(name="c", mode="classify"))
    assert {n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad} == {"classifier"}


def test_imagenet_weights_offline_is_one_line_naming_the_option(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(models, "efficientnet_b0", offline)
    with pytest.raises(ConfigError, match="model.weights") as err:
        GlaucomaClassifier("efficientnet_b0", "imagenet", pretrained=True)
    assert "\n" not in str(err.value) and "local" in str(err.value)


def test_local_weights_file(tmp_path: Path):
    reference = models.efficientnet_b0(weights=None)
    torch.save(reference.state_dict(), tmp_path / "b0.pth")
    net = GlaucomaClassifier("efficientnet_b0", str(tmp_path / "b0.pth"), pretrained=True)
    assert torch.equal(net.features[0][0].weight[:, :3], reference.features[0][0].weight)
    with pytest.raises(ConfigError, match="neither"):
        GlaucomaClassifier("efficientnet_b0", str(tmp_path / "missing.pth"), pretrained=True)


def test_tiny_run_meets_the_synthetic_targets(fundus_demo: DemoRun):
    metrics = json.loads((fundus_demo.eval_dir / "metrics.json").read_text())
    overall = metrics["overall"]
    assert overall["disc_dice"] >= 0.85
    assert overall["cup_dice"] >= 0.7
    assert overall["auc"] >= 0.85
    assert overall["fovea_distance"] < 10.0  # pixels of 224-256 px photographs
    assert set(metrics["per_camera"]) == {"224x224", "256x248"}
    for camera in metrics["per_camera"].values():
        assert {"auc", "sensitivity_at_85_specificity", "disc_dice", "cup_dice", "vcdr_mae", "fovea_distance"} <= set(
            camera
        )
    assert (fundus_demo.eval_dir / "test_refuge.png").is_file()


def test_evaluation_writes_a_challenge_submission(fundus_demo: DemoRun):
    sub = fundus_demo.eval_dir / "submission"
    cls_rows = _rows(sub / "classification_results.csv")
    fovea_rows = _rows(sub / "fovea_location_results.csv")
    assert list(cls_rows[0]) == ["FileName", "Glaucoma Risk"] and list(fovea_rows[0]) == [
        "FileName",
        "Fovea_X",
        "Fovea_Y",
    ]
    assert len(cls_rows) == len(fovea_rows) == len(list((sub / "segmentation").glob("*.bmp"))) == 40
    assert all(0.0 <= float(r["Glaucoma Risk"]) <= 1.0 for r in cls_rows)


def test_predictions_on_clinical_files(fundus_demo: DemoRun):
    pred = fundus_demo.pred_dir
    rows = {r["case"]: r for r in _rows(pred / "predictions.csv")}
    assert set(rows) == {"eye_glaucoma_suspect", "eye_normal", "op_rgb", "op_jpeg_ybr"}
    failures = _rows(pred / "failures.csv")
    assert [f["case"] for f in failures] == ["no_disc"] and "no optic disc" in failures[0]["reason"]
    for case, row in rows.items():
        folder = pred / case
        bmp = next((folder / "segmentation").glob("*.bmp"))
        with Image.open(bmp) as img:
            mask = np.asarray(img)
        assert img.format == "BMP" and mask.shape == (int(row["height"]), int(row["width"]))
        assert set(np.unique(mask)) <= {0, 128, 255} and (mask == 0).any() and (mask == 128).any()
        assert Path(_rows(folder / "classification_results.csv")[0]["FileName"]).stem == bmp.stem
        assert float(row["fovea_x"]) == pytest.approx(float(_rows(folder / "fovea_location_results.csv")[0]["Fovea_X"]))
        assert (folder / "overlay.png").is_file()
        assert (row["seg"] == "True") == case.startswith("op_")


def test_dicom_seg_reads_back_and_validates(fundus_demo: DemoRun):
    for case in ("op_rgb", "op_jpeg_ybr"):
        if shutil.which("dciodvfy"):
            result = subprocess.run(
                ["dciodvfy", str(fundus_demo.pred_dir / case / "seg.dcm")], capture_output=True, text=True
            )
            assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == []
        seg = hd.seg.segread(fundus_demo.pred_dir / case / "seg.dcm")
        assert seg.number_of_segments == 2
        assert [seg.get_segment_description(i).SegmentLabel for i in (1, 2)] == ["optic disc rim", "optic cup"]
        with Image.open(next((fundus_demo.pred_dir / case / "segmentation").glob("*.bmp"))) as img:
            challenge = np.asarray(img)
        frames = np.asarray(seg.pixel_array)  # one binary frame per segment
        assert frames.shape[-2:] == challenge.shape
        assert sorted(frames.reshape(len(frames), -1).sum(1).tolist()) == sorted(
            [int((challenge == 128).sum()), int((challenge == 0).sum())]
        )
