"""``medml.load(...).predict(...)``: what ``medml predict`` writes for a case, as Python objects; and ensembles."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb

import medml
from medml.cli import main
from medml.engine.checkpoint import read_checkpoint, save_model
from medml.engine.predict import average_outputs
from medml.errors import ConfigError, MedmlError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ecg(tiny_demo):
    return tiny_demo("ecg")


def _csv_probs(pred_dir: Path, case: str) -> np.ndarray:
    with (pred_dir / case / "probabilities.csv").open() as fh:
        return np.array([float(row["probability"]) for row in csv.DictReader(fh)])


def test_load_predict_file_folder_and_array(ecg, tmp_path):
    model = medml.load(ecg.checkpoint)
    assert model.name == "ecg" and len(model.labels) == 71 and model.card is None
    one = model.predict(ecg.clinical_dir / "wfdb_afib.hea")
    assert one.ok and one.case_id == "wfdb_afib"
    np.testing.assert_allclose(one.outputs["probs"], _csv_probs(ecg.pred_dir, "wfdb_afib"), atol=1e-6)
    assert one.outputs["decision"].dtype == bool and "labels" in one.outputs["explanation"]
    with (ecg.pred_dir / "predictions.csv").open() as fh:
        written = next(r for r in csv.DictReader(fh) if r["case"] == "wfdb_afib")
    assert one.row["top_label"] == written["top_label"]

    # An array with its sampling rate and lead order: the same numbers as the file it came from.
    signal, fields = wfdb.rdsamp(str(ecg.clinical_dir / "wfdb_afib"))
    from_array = model.predict(signal.T, fs=fields["fs"], leads=fields["sig_name"])
    np.testing.assert_allclose(from_array.outputs["probs"], one.outputs["probs"], atol=1e-6)
    with pytest.raises(ConfigError, match="sampling rate"):
        model.predict(signal.T)

    # A folder: one Prediction per case, the unusable one (flat lead) with its reason; files kept with save_to.
    folder = tmp_path / "in"
    folder.mkdir()
    for path in [*ecg.clinical_dir.glob("wfdb_flat_lead.*"), *ecg.clinical_dir.glob("wfdb_normal.*")]:
        shutil.copy(path, folder)
    results = {r.case_id: r for r in model.predict(folder, save_to=tmp_path / "kept")}
    assert set(results) == {"wfdb_flat_lead", "wfdb_normal"}
    assert not results["wfdb_flat_lead"].ok and "flat" in results["wfdb_flat_lead"].error
    assert results["wfdb_normal"].ok and (tmp_path / "kept" / "wfdb_normal" / "probabilities.csv").is_file()
    with pytest.raises(MedmlError):
        model.predict(folder / "wfdb_flat_lead.hea")

    # overrides (--set) change the stored config's inference options: here the prototypes listed per label
    few = medml.load(ecg.checkpoint, overrides=["model.explain_top_k=1"]).predict(ecg.clinical_dir / "wfdb_afib.hea")
    assert all(len(entry["prototypes"]) == 1 for entry in few.outputs["explanation"]["labels"])
    assert max(len(entry["prototypes"]) for entry in one.outputs["explanation"]["labels"]) > 1
    np.testing.assert_array_equal(few.outputs["probs"], one.outputs["probs"])


def test_ensemble_averages_probabilities(ecg, tmp_path, capsys):
    """Two models (the run's, and one with other fusion weights): the ensemble's probabilities are their mean."""
    loaded, changed = medml.load(ecg.checkpoint), medml.load(ecg.checkpoint)
    with torch.no_grad():
        fusion = next(p for n, p in changed.module.named_parameters() if n.startswith("model.fusion"))
        fusion.mul_(0.5)
    other = save_model(tmp_path / "other.ckpt", changed.pipeline, changed.module)
    assert read_checkpoint(other)["medml"]["final"]
    case = ecg.clinical_dir / "wfdb_stach_imi.hea"
    a, b = loaded.predict(case), medml.load(other).predict(case)
    assert not np.allclose(a.outputs["probs"], b.outputs["probs"])

    one_case = tmp_path / "in"
    one_case.mkdir()
    for path in ecg.clinical_dir.glob("wfdb_stach_imi.*"):
        shutil.copy(path, one_case)
    argv = ["predict", "ecg", "--input", str(one_case), "--output", str(tmp_path / "ens")]
    assert main([*argv, "--checkpoint", str(ecg.checkpoint), "--checkpoint", str(other)]) == 0
    mean = (a.outputs["probs"] + b.outputs["probs"]) / 2
    np.testing.assert_allclose(_csv_probs(tmp_path / "ens", "wfdb_stach_imi"), mean, atol=2e-6)
    record = json.loads((tmp_path / "ens" / "run.json").read_text())
    assert len(record["checkpoint"]) == 2 and len(record["checkpoint_sha256"]) == 2


def test_average_outputs_rule():
    members = [
        {"probs": np.array([0.2, 0.8]), "thresholds": np.array([0.5, 0.5]), "decision": None, "mask": np.ones(2)},
        {"probs": np.array([0.6, 0.4]), "thresholds": np.array([0.3, 0.5]), "decision": None, "mask": np.zeros(2)},
    ]
    out = average_outputs(members)
    np.testing.assert_allclose(out["probs"], [0.4, 0.6])
    np.testing.assert_allclose(out["thresholds"], [0.4, 0.5])
    assert out["decision"].tolist() == [True, True]
    assert out["mask"].tolist() == [1, 1]  # not a probability: the first member's
    assert average_outputs([{"probability": 0.2}, {"probability": 0.4}])["probability"] == pytest.approx(0.3)
    with pytest.raises(MedmlError, match="no probabilities"):
        average_outputs([{"labels": np.zeros(2)}, {"labels": np.ones(2)}])


def test_import_medml_stays_light():
    code = "import sys, medml; assert callable(medml.load); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
