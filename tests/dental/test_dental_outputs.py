"""Clinical outputs of one panoramic: COCO results, the challenge submission (read back as the challenge's evaluator
reads it), the DICOM SR with planar regions (dciodvfy, highdicom), the overlay figure and the case row."""

import json
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from PIL import Image

from medml.data.dentex import read_panoramic
from medml.data.synthetic_dentex import write_clinical_panoramics
from medml.metrics.detection import dentex_metrics
from medml.pipelines.dental import outputs


@pytest.fixture(scope="module")
def clinical(tmp_path_factory):
    folder = write_clinical_panoramics(tmp_path_factory.mktemp("pano") / "panoramics", size=(128, 256), truth=True)
    truth = json.loads((folder.parent / "panoramics_truth.json").read_text())
    return folder, truth


def _detections(rows, scores=None):
    """Detections from ground-truth rows: the true boxes and labels, plus one false positive."""
    boxes = np.array([r["box"] for r in rows] + [[5, 5, 30, 40]], np.float64)
    labels = np.array([[r["quadrant"], r["tooth"], r["diagnosis"]] for r in rows] + [[0, 0, 1]])
    n = len(boxes)
    scores = np.linspace(0.9, 0.35, n) if scores is None else scores
    probs = np.stack([np.full(n, 0.8), np.full(n, 0.7), scores], axis=1)
    return {"boxes": boxes, "labels": labels, "scores": scores, "probs": probs}


def test_coco_records_and_submission_read_back_like_the_challenge(clinical):
    _, truth = clinical
    names = sorted(truth)[:3]
    dets = {z: _detections(truth[name], np.random.default_rng(z).random(len(truth[name]) + 1)) for z, name in
            enumerate(names)}  # fmt: skip
    records = outputs.box_records(dets[0], image_id="case0")
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)
    first = records[0]
    assert first["fdi"] == 10 * (first["category_id_1"] + 1) + first["category_id_2"] + 1
    assert first["category_id"] == first["category_id_3"] and first["diagnosis"] in outputs.DIAGNOSIS_CODES
    x, y, w, h = first["bbox"]
    i = int(np.argmax(dets[0]["scores"]))
    np.testing.assert_allclose([x, y, x + w, y + h], dets[0]["boxes"][i], atol=0.01)

    doc = outputs.challenge_submission(list(dets.items()))
    assert doc["type"] == "Multiple 2D bounding boxes" and doc["version"] == {"major": 1, "minor": 0}
    assert doc["boxes"][0]["name"].count(" - ") == 2 and len(doc["boxes"][0]["corners"]) == 4
    back = outputs.parse_challenge_submission(json.loads(json.dumps(doc)))
    gt = [
        {"image_id": z, "boxes": [r["box"] for r in truth[name]],
         "labels": [[r["quadrant"], r["tooth"], r["diagnosis"]] for r in truth[name]]}
        for z, name in enumerate(names)
    ]  # fmt: skip
    via_file = dentex_metrics(gt, [{"image_id": z, **d} for z, d in back.items()])
    direct = dentex_metrics(gt, [{"image_id": z, **d} for z, d in dets.items()])
    for level in ("quadrant", "enumeration", "diagnosis", "mean"):
        assert via_file[level]["AP"] == pytest.approx(direct[level]["AP"], abs=1e-6)
    assert 0 < direct["mean"]["AP"] < 1  # the false positives are ranked among the true boxes


def _sr_case(clinical, name, tmp_path, threshold=0.3):
    folder, truth = clinical
    source = pydicom.dcmread(folder / name, stop_before_pixels=True)
    det = _detections(truth[name])
    path = outputs.write_dental_sr(source, det, tmp_path / "sr.dcm", threshold=threshold)
    return source, det, path


@pytest.mark.parametrize("name", ["pano_px_voilut_16bit.dcm", "pano_io_8bit_window.dcm"])
def test_sr_planar_regions_reference_the_image(clinical, tmp_path, name):
    import highdicom as hd

    source, det, path = _sr_case(clinical, name, tmp_path)
    if shutil.which("dciodvfy"):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == []
    sr = hd.sr.srread(path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.Modality == "SR"
    groups = sr.content.get_planar_roi_measurement_groups()
    kept = det["scores"] >= 0.3
    assert len(groups) == int(kept.sum())
    for group, box, labels in zip(groups, det["boxes"][kept], det["labels"][kept], strict=True):
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        np.testing.assert_allclose(points.min(0), box[:2], atol=0.01)
        np.testing.assert_allclose(points.max(0), box[2:], atol=0.01)
        image = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
        fdi = 10 * (labels[0] + 1) + labels[1] + 1
        assert group.finding_sites[0].value.meaning == f"Tooth {fdi} (FDI)"
        assert [round(m.value, 3) for m in group.get_measurements()][:2] == [0.8, 0.7]


def test_sr_without_findings_says_absent(clinical, tmp_path):
    import highdicom as hd

    _, _, path = _sr_case(clinical, "pano_dx_mono1_window.dcm", tmp_path, threshold=0.99)
    sr = hd.sr.srread(path)
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    evaluation = group.get_qualitative_evaluations()[0]
    assert (evaluation.name.meaning, evaluation.value.meaning) == ("Abnormal tooth", "Absent")


def test_overlay_and_case_outputs(clinical, tmp_path):
    folder, truth = clinical
    config = SimpleNamespace(predict=SimpleNamespace(score_threshold=0.5))
    rows = {}
    for name, kind in (("pano.png", "image"), ("pano_dx_mono1_voilut.dcm", "dicom_image")):
        grey, meta = read_panoramic(folder / name)
        det = _detections(truth[name])
        case = SimpleNamespace(case_id=name.split(".")[0], kind=kind)
        sample = {"grey": grey, "kind": kind, "source": folder / name, "meta": meta}
        out = tmp_path / case.case_id
        rows[name] = outputs.write_case_outputs(config, case, sample, det, out)
        files = sorted(p.name for p in out.iterdir())
        expected = ["detections.json", "overlay.png", "submission.json"]
        assert files == (sorted([*expected, "findings_sr.dcm"]) if kind == "dicom_image" else expected)
        records = json.loads((out / "detections.json").read_text())
        assert len(records) == len(det["boxes"])  # every box in the JSON, the threshold only for people
        assert not any("Patient" in key for r in records for key in r)
        picture = np.asarray(Image.open(out / "overlay.png").convert("RGB")).astype(int)
        assert picture.shape[1] >= 1300
        kept = det["labels"][det["scores"] >= 0.5][:, 2]
        for d, colour in enumerate(outputs.DIAGNOSIS_COLOURS.values()):  # each shown diagnosis in its colour
            rgb = np.array([int(colour[k : k + 2], 16) for k in (1, 3, 5)])
            found = int((np.abs(picture - rgb).sum(-1) < 30).sum())
            assert (found > 300) == (d in kept), (name, d, found)  # boxes and labels; a legend swatch is ~80 px
    row = rows["pano_dx_mono1_voilut.dcm"]
    n = int((_detections(truth["pano_dx_mono1_voilut.dcm"])["scores"] >= 0.5).sum())
    assert row["SOPInstanceUID"] and row["n_findings"] == n
    assert row["findings"].count(";") == row["n_findings"] - 1
    assert sum(row[f"n_{n.lower().replace(' ', '_')}"] for n in outputs.DIAGNOSIS_CODES) == row["n_findings"]


def test_no_detections(clinical, tmp_path):
    folder, _ = clinical
    grey, meta = read_panoramic(folder / "pano_px_window.dcm")
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros((0, 3), int), "scores": np.zeros(0)}
    sample = {"grey": grey, "kind": "dicom_image", "source": folder / "pano_px_window.dcm", "meta": meta}
    row = outputs.write_case_outputs(None, SimpleNamespace(case_id="px"), sample, empty, tmp_path)
    assert row["n_findings"] == 0 and row["findings"] == ""
    assert json.loads((tmp_path / "detections.json").read_text()) == []
    assert json.loads((tmp_path / "submission.json").read_text())["boxes"] == []
    assert (tmp_path / "findings_sr.dcm").is_file() and (tmp_path / "overlay.png").is_file()
