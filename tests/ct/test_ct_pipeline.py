"""The ct pipeline end to end on the synthetic CT-RATE (the session's shared tiny demo run): learning, evaluation
outputs, prediction on a shuffled oblique DICOM series and a NIfTI volume with SR and z-profile, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from medml.config import load_config, resolve_recipe
from medml.errors import GeometryError, UnsupportedFormatError
from medml.io.types import Volume
from medml.pipelines.ct.config import CtConfig
from medml.pipelines.ct.pipeline import check_chest_ct


@pytest.fixture(scope="module")
def ct_demo(tiny_demo):
    return tiny_demo("ct")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_tiny_recipe_learns_the_synthetic_abnormalities(ct_demo):
    metrics = json.loads((ct_demo.eval_dir / "metrics.json").read_text())
    assert metrics["n"] >= 40 and len(metrics["per_label"]) == 18
    # The goal. This run (synthesis seed 0) measures 0.878; seeds 1 and 2 give 0.858 and 0.869 (training is
    # deterministic on one CPU thread; single labels still move by 0.1-0.3 between seeds, the macro mean much less).
    assert metrics["macro_auroc"] >= 0.85, metrics["macro_auroc"]
    lo, hi = metrics["macro_auroc_ci"]
    assert lo <= metrics["macro_auroc"] <= hi
    assert 0.0 < metrics["mAP"] <= 1.0 and metrics["threshold_rule"] == "fixed"
    per_label = _rows(ct_demo.eval_dir / "per_label.csv")
    assert [r["label"] for r in per_label][:3] == ["Medical material", "Arterial wall calcification", "Cardiomegaly"]
    assert (ct_demo.eval_dir / "per_label_auroc.png").stat().st_size > 0
    assert "EXACT" in (ct_demo.eval_dir / "comparison.md").read_text()
    run = json.loads((ct_demo.run_dir / "run.json").read_text())
    split = run["split"]
    assert split["train_volumes"] > 0 and split["val_volumes"] > 0


def test_prediction_on_oblique_dicom_and_nifti(ct_demo):
    pred = ct_demo.pred_dir
    rows = {r["case"]: r for r in _rows(pred / "predictions.csv")}
    assert set(rows) == {"chest_oblique", "chest"}
    assert rows["chest_oblique"]["kind"] == "dicom_series" and rows["chest"]["kind"] == "nifti"
    assert sum(c.startswith("prob_") for c in rows["chest"]) == 18
    failures = {r["case"]: r["reason"] for r in _rows(pred / "failures.csv")}
    assert "slices" in failures["scout"] and "photo" in failures  # failure rows name cases by id, not file name
    result = json.loads((pred / "chest_oblique" / "result.json").read_text())
    assert len(result["findings"]) == 18
    assert abs(result["source_geometry"]["direction"][2][1]) > 0.1  # the series really is oblique
    for case in ("chest", "chest_oblique"):
        assert (pred / case / "z_profile.png").stat().st_size > 0
    assert not (pred / "chest" / "findings_sr.dcm").exists()  # SR only for DICOM sources


def test_sr_reads_back_and_references_the_source_series(ct_demo):
    import highdicom as hd

    sr_path = ct_demo.pred_dir / "chest_oblique" / "findings_sr.dcm"
    ds = pydicom.dcmread(sr_path)
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    series = {p.parent for p in (ct_demo.clinical_dir / "chest_oblique").iterdir()}
    source = pydicom.dcmread(next(p for p in (ct_demo.clinical_dir / "chest_oblique").iterdir() if p.is_file()))
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID and len(series) == 1
    group = sr.content.get_observation_groups() if hasattr(sr.content, "get_observation_groups") else None
    text = str(ds)
    assert "Pleural effusion" in text and "99MEDML" in text
    assert group is None or len(group) >= 1


def test_not_a_chest_ct_is_refused():
    config = load_config(CtConfig, resolve_recipe("ct", "tiny"))
    case = SimpleNamespace(path=Path("x"), kind="dicom_series", meta={})
    air = np.full((40, 16, 16), -1000.0, np.float32)
    mr = Volume(air, (1.0, 1.0, 5.0), (0, 0, 0), np.eye(3), {"Modality": "MR"})
    with pytest.raises(UnsupportedFormatError, match="modality MR"):
        check_chest_ct(mr, case, config)
    scout = Volume(air, (1.0, 1.0, 5.0), (0, 0, 0), np.eye(3), {"Modality": "CT", "ImageType": "ORIGINAL\\LOCALIZER"})
    with pytest.raises(UnsupportedFormatError, match="localizer"):
        check_chest_ct(scout, case, config)
    short = Volume(air[:10], (1.0, 1.0, 5.0), (0, 0, 0), np.eye(3), {"Modality": "CT"})
    with pytest.raises(GeometryError, match="10 slices"):
        check_chest_ct(short, case, config)
    nifti = SimpleNamespace(path=Path("x.nii.gz"), kind="nifti", meta={})
    no_air = Volume(np.full((40, 16, 16), 300.0, np.float32), (1.0, 1.0, 5.0), (0, 0, 0), np.eye(3), {})
    with pytest.raises(UnsupportedFormatError, match="Hounsfield"):
        check_chest_ct(no_air, nifti, config)
