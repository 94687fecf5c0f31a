"""The ecg pipeline end to end on the synthetic PTB-XL: the session's shared tiny demo run (trained once through
the engine), evaluation on the whole test fold, projection provenance, folder prediction with explanations, input
checks."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medml.config import load_config, resolve_recipe
from medml.errors import ConfigError, SignalError
from medml.pipelines.ecg.config import EcgConfig, EcgDataConfig
from medml.pipelines.ecg.data import ecg_preprocessing
from medml.pipelines.ecg.pipeline import EcgPipeline
from medml.transforms import apply_transform
from medml.transforms.ecg import resample_highpass


@pytest.fixture(scope="session")
def ecg_run(tiny_demo):
    """The session's one tiny ecg run (`tiny_demo`: synthetic PTB-XL, tiny recipe, predictions on the synthetic
    clinical folder, evaluation on the test fold), with its exported model reloaded once."""
    from medml.engine.checkpoint import load_checkpoint

    demo = tiny_demo("ecg")
    pipeline, module = load_checkpoint(demo.checkpoint, expect_pipeline="ecg")
    return SimpleNamespace(demo=demo, data=demo.data_dir, run_dir=demo.run_dir, pipeline=pipeline, module=module)


@pytest.fixture(scope="session")
def ptbxl(ecg_run):
    from medml.data.ptbxl import PTBXL

    return PTBXL(ecg_run.data)


def test_tiny_recipe_learns_synthetic_ptbxl(ecg_run, ptbxl):
    out = ecg_run.demo.eval_dir  # written by `medml evaluate` (pipeline.evaluate) in the demo
    headline = json.loads((out / "run.json").read_text())["metrics"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert headline["macro_auroc"] >= 0.85, metrics["label_sets"]["all"]["per_label"]
    # whole fold, every record, 71 outputs; labels absent from the fold are listed, not scored
    assert metrics["n_records"] == len(ptbxl.split_indices("test"))
    assert metrics["label_sets"]["all"]["n"] == metrics["n_records"]
    all_set = metrics["label_sets"]["all"]
    assert len(all_set["per_label"]) + len(all_set["skipped"]) == 71
    lo, hi = all_set["macro_ci"]
    assert lo <= all_set["macro"] <= hi
    for name in ("diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm", "branch_rhythm"):
        assert name in metrics["label_sets"]
    rows = list(csv.DictReader((out / "per_label_auroc.csv").open()))
    assert {r["label_set"] for r in rows} >= {"all", "superdiagnostic"}
    assert (out / "per_label_auroc.png").stat().st_size > 0
    assert "| all (71" in (out / "benchmark_table.md").read_text()
    # the saved per-record outputs reproduce the headline number
    from medml.metrics import fmax, multilabel_auroc

    saved = list(csv.DictReader((out / "predictions_test.csv").open()))
    codes = ecg_run.module.label_names
    probs = np.array([[float(r[f"prob_{c}"]) for c in codes] for r in saved])
    labels = np.array([[int(r[f"label_{c}"]) for c in codes] for r in saved])
    assert sorted(int(r["ecg_id"]) for r in saved) == sorted(ptbxl.ecg_ids[ptbxl.split_indices("test")].tolist())
    assert multilabel_auroc(labels, probs, n_bootstrap=0)["macro"] == pytest.approx(headline["macro_auroc"], abs=1e-4)
    # Fmax (labelled optimistic) is the saved outputs' Fmax, not just a number in (0, 1]
    assert (metrics["fmax"], metrics["fmax_threshold"]) == pytest.approx(fmax(labels, probs), abs=1e-6)
    assert "optimistic" in metrics["fmax_note"] and "optimistic" in (out / "benchmark_table.md").read_text()


def test_training_logged_stage_monitors(ecg_run):
    with (ecg_run.run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0])
    assert {"stage", "epoch", "val_auroc", "val_auroc_rhythm", "val_auroc_morphology", "val_auroc_global"} <= columns
    fusion = [float(r["val_auroc"]) for r in rows if r["stage"] == "fusion" and r["val_auroc"]]
    assert fusion and max(fusion) > 0.8
    # the monitored value is the whole-fold AUROC: recomputing it over fold 9 with the kept weights gives it back
    stages = ecg_run.run_dir / "stages"
    best = json.loads(next(stages.glob("*-fusion/done.json")).read_text())["best_score"]
    recomputed = json.loads(next(stages.glob("*-thresholds/done.json")).read_text())["result"]["val_macro_auroc"]
    assert recomputed == pytest.approx(best, abs=1e-5) and best == pytest.approx(max(fusion), abs=1e-6)
    thresholds = ecg_run.module.thresholds
    assert not torch.allclose(thresholds, torch.full_like(thresholds, 0.5))  # chosen on validation


def test_projection_puts_prototypes_on_training_segments_of_their_class(ecg_run, ptbxl):
    module = ecg_run.module
    train_rows = set(ptbxl.split_indices("train").tolist())
    positives = ptbxl.labels[sorted(train_rows)].sum(0)
    checked = 0
    for name, branch in module.model.branches.items():
        label_index = module.model.label_index(name)
        paths = branch.projection_paths()
        for p, cls in enumerate(branch.prototype_class().tolist()):
            code = int(label_index[cls])
            row = int(branch.projection_row[p])
            if positives[code] == 0:
                assert row == -1  # nothing of that class to project onto
                continue
            assert row in train_rows, (name, p)
            assert ptbxl.labels[row, code] == 1, (name, p)
            assert int(branch.projection_ecg_id[p]) == int(ptbxl.ecg_ids[row])
            assert Path(paths[p]) == ptbxl.record_path(row)
            # re-encoding the record reproduces the prototype from its recorded window
            signal = torch.as_tensor(np.array(ptbxl.signals[row]))[None]
            with torch.no_grad():
                z = branch.latent(module.standardize(signal))
            if branch.kind == "1d":
                patch = z[0]
            else:
                start = int(branch.projection_start[p])
                window = next(w for w in range(z.shape[-1]) if branch.raw_start(w) == start)
                patch = z[0, :, :, window : window + branch.prototype_length]
            torch.testing.assert_close(patch, branch.prototype_vectors[p].detach(), atol=1e-4, rtol=1e-4)
            stored = branch.projection_segment[p].float()
            raw = signal[0, :, int(branch.projection_start[p]) :][:, : stored.shape[1]]
            torch.testing.assert_close(stored[:, : raw.shape[1]], raw, atol=2e-2, rtol=1e-2)
            checked += 1
    assert checked >= 10


def test_predict_folder_explains_with_training_records(ecg_run, ptbxl):
    out = ecg_run.demo.pred_dir  # the demo's `predict` of its synthetic clinical folder (synthesize_clinical seed 1)
    summary = ecg_run.demo.summary()
    assert summary["predicted"] >= 6 and summary["failed"] == 1
    predictions = {r["case"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert "waveform_ecg" in predictions  # pydicom's externally written 12-lead DICOM ECG
    assert any(c.startswith("wfdb_") for c in predictions)
    failures = list(csv.DictReader((out / "failures.csv").open()))
    assert [f["case"] for f in failures] == ["wfdb_flat_lead"] and "flat" in failures[0]["reason"]

    train_ids = set(ptbxl.ecg_ids[ptbxl.split_indices("train")].tolist())
    labels = ecg_run.module.label_names
    for case in predictions:
        probs = list(csv.DictReader((out / case / "probabilities.csv").open()))
        assert [r["label"] for r in probs] == labels
        explanation = json.loads((out / case / "explanation.json").read_text())
        assert explanation["labels"]
        for entry in explanation["labels"]:
            row = probs[labels.index(entry["label"])]
            assert entry["positive"] == bool(int(row["decision"]))
            for proto in entry["prototypes"]:
                assert proto["source_ecg_id"] in train_ids
                assert Path(proto["source_record"] + ".hea").is_file()
                lo, hi = proto["source_window_s"]
                assert 0 <= lo < hi <= 10.0 + 1e-6
        assert (out / case / "explanation.png").stat().st_size > 0
    # The simulated LVH record (true labels LVH, SR) is called LVH, and the LVH decision is explained by LVH
    # evidence: a prototype of class LVH is among the top contributions for label LVH, pushing towards it. (The
    # first one may be a CLBBB prototype: the synthetic CLBBB also has high QRS voltage and co-occurs with LVH.)
    lvh_case = predictions["wfdb_lvh"]
    assert "LVH" in lvh_case["positive_labels"].split(";"), lvh_case
    lvh = json.loads((out / "wfdb_lvh" / "explanation.json").read_text())
    entry = next(e for e in lvh["labels"] if e["label"] == "LVH")
    assert entry["positive"]
    top = [(p["label"], round(p["contribution"], 3)) for p in entry["prototypes"]]
    assert any(label == "LVH" and contribution > 0 for label, contribution in top), top


def test_frozen_branches_keep_their_batchnorm_statistics(ecg_run):
    """Once a branch is projected it is frozen in eval mode (spec 1.8): the later stages (other branches' joint
    training, fusion over all three) must not move its BatchNorm running statistics. Compared between the weights
    the real tiny run had at the end of each projection stage and the exported final weights."""
    stages = ecg_run.run_dir / "stages"
    final = ecg_run.module.state_dict()
    checked = 0
    for branch in ("rhythm", "morphology", "global"):
        end = torch.load(next(stages.glob(f"*-project_{branch}/end_state.pt")), map_location="cpu", weights_only=True)[
            "weights"
        ]
        prefix = f"model.branches.{branch}."
        keys = [
            k
            for k in end
            if k.startswith(prefix) and k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
        ]
        assert keys, branch
        for key in keys:
            torch.testing.assert_close(final[key].cpu(), end[key], rtol=0, atol=0, msg=key)
        checked += len(keys)
    # the statistics did move while each branch was trained (so the comparison above can fail)
    first = torch.load(next(stages.glob("*-joint_rhythm/end_state.pt")), map_location="cpu", weights_only=True)
    assert int(first["weights"]["model.branches.rhythm.backbone.bn1.num_batches_tracked"]) > 0
    assert checked > 30


# ----- no training needed ---------------------------------------------------------------------------------------


def _preprocess(signal: np.ndarray, fs: float, cfg: EcgDataConfig) -> np.ndarray:
    return apply_transform(ecg_preprocessing(cfg), {"signal": signal, "fs": fs, "path": "x"})["signal"]


def test_preprocess_resamples_crops_and_rejects_bad_signals():
    rng = np.random.default_rng(0)
    t = np.arange(int(12.5 * 250)) / 250
    ecg = (np.sin(2 * np.pi * 1.2 * t) + 0.05 * rng.standard_normal((12, t.size))).astype(np.float32)
    cfg = EcgDataConfig()
    out = _preprocess(ecg, 250.0, cfg)
    assert out.shape == (12, 1000) and out.dtype == np.float32
    assert abs(float(out.mean())) < 0.05  # the high-pass removed the offset
    flat = ecg.copy()
    flat[7] = 0.3  # constant lead V2
    with pytest.raises(SignalError, match="V2"):
        _preprocess(flat, 250.0, cfg)
    nan = ecg.copy()
    nan[2, 10] = np.nan
    with pytest.raises(SignalError, match="NaN"):
        _preprocess(nan, 250.0, cfg)
    with pytest.raises(SignalError, match="shorter"):
        _preprocess(ecg[:, :750], 250.0, cfg)
    with pytest.raises(SignalError, match="strict"):
        _preprocess(ecg, 250.0, EcgDataConfig(length_policy="strict"))
    short = _preprocess(ecg[:, :2250], 250.0, cfg)  # 9 s: zero-padded to 10 s
    assert short.shape == (12, 1000) and np.all(short[:, 900:] == 0)
    centre = _preprocess(ecg, 250.0, EcgDataConfig(crop="center"))  # 12.5 s -> 1250 samples: keeps 125..1125
    full = resample_highpass(100)({"signal": ecg, "fs": 250.0})["signal"]
    np.testing.assert_array_equal(centre, full[:, 125:1125].astype(np.float32))
    np.testing.assert_array_equal(out, full[:, :1000].astype(np.float32))


def test_clinical_preprocessing_is_the_training_cache_s(synthetic_ptbxl, ptbxl_cache):
    """A PTB-XL record given to ``predict`` as a clinical WFDB file becomes the very array the model trained on."""
    from medml.data.ptbxl import PTBXL

    ptbxl = PTBXL(synthetic_ptbxl, cache_dir=ptbxl_cache)
    pipeline = EcgPipeline(EcgConfig())
    for row in (0, 17, 123):
        sample = pipeline.load_case(Path(str(ptbxl.record_path(row)) + ".hea"))
        assert sample["signal"].shape == (12, 1000) and sample["source_fs"] == 100.0
        # one reader and one preprocessing; the cache reads the stored samples in float64, clinical files in float32
        np.testing.assert_allclose(sample["signal"], ptbxl.signals[row], rtol=0, atol=1e-5)


def test_paper_defaults_and_recipes():
    paper = EcgConfig()
    enabled = [s.name for s in paper.stages if s.enabled]
    assert enabled == [
        "joint_rhythm",
        "project_rhythm",
        "joint_morphology",
        "project_morphology",
        "joint_global",
        "project_global",
        "fusion",
        "thresholds",
    ]
    assert (paper.train.optim.lr, paper.train.optim.weight_decay, paper.train.batch_size) == (1e-4, 1.7e-4, 32)
    assert (paper.train.patience, paper.train.max_epochs, paper.model.dropout) == (10, 200, 0.35)
    assert (paper.loss.clst, paper.loss.sep, paper.loss.div, paper.loss.cnrst) == (0.004, 0.0004, 250.0, 300.0)
    assert load_config(EcgConfig, resolve_recipe("ecg", "paper")) == paper
    tiny = load_config(EcgConfig, resolve_recipe("ecg", "tiny"))
    assert tiny.train.num_workers == 0 and tiny.train.batch_size == 32


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(ConfigError, match="jiont_rhythm"):  # the earlier name-only form
        load_config(EcgConfig, {"stages": [{"name": "jiont_rhythm"}]})
    with pytest.raises(ConfigError, match="'stages.0.mode'"):
        load_config(EcgConfig, {"stages": [{"mode": "jiont", "branch": "rhythm"}]})
    with pytest.raises(ConfigError, match="needs a branch"):
        load_config(EcgConfig, {"stages": [{"mode": "joint"}]})
    with pytest.raises(ConfigError, match="follow from mode and branch"):
        load_config(EcgConfig, {"stages": [{"mode": "joint", "branch": "rhythm", "trainable": ["model.fusion"]}]})


@pytest.mark.parametrize(
    "override",
    [
        "data.sampling_rate=0",
        "data.seconds=-10",
        "model.dropout=1.0",
        "model.branch_morphology.prototypes_per_class=0",
        "model.branch_global.widths=[8,16,32]",
        "loss.div=-1",
        "loss.l1=-0.1",
    ],
)
def test_out_of_range_values_are_one_line_errors_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"config key '{key}'") as info:
        load_config(EcgConfig, None, [override])
    assert "\n" not in str(info.value)


def test_stages_say_what_they_train_and_earlier_recipes_still_load():
    config = EcgConfig()
    stage = next(s for s in config.stages if s.name == "joint_morphology")
    assert (stage.mode, stage.branch, stage.kind, stage.trainable) == ("joint", "morphology", "fit", [])
    assert [(s.name, s.kind) for s in config.stages if s.mode in ("project", "thresholds")] == [
        ("project_rhythm", "run"),
        ("project_morphology", "run"),
        ("project_global", "run"),
        ("thresholds", "run"),
    ]
    legacy = {  # a stage as recipes and checkpoints wrote it before stages had a mode
        "name": "joint_rhythm",
        "trainable": [f"model.branches.rhythm.{p}" for p in ("backbone", "add_on", "prototype_vectors")],
    }
    loaded = load_config(EcgConfig, {"stages": [legacy]}).stages[0]
    assert (loaded.mode, loaded.branch, loaded.trainable) == ("joint", "rhythm", [])
    with pytest.raises(ConfigError, match="follow from mode and branch"):  # other prefixes would train otherwise
        load_config(EcgConfig, {"stages": [{**legacy, "trainable": ["model.fusion"]}]})


def test_evaluate_runs_on_the_modules_device(ecg_run, monkeypatch):
    """``medml evaluate --device cpu`` on a CUDA machine: prediction stays on the device the module was put on."""
    from medml.pipelines.ecg.evaluate import evaluate_split

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the old code then moved the model to CUDA
    results, arrays = evaluate_split(ecg_run.module, ecg_run.data, "val", ecg_run.pipeline.config, n_bootstrap=0)
    assert ecg_run.module.device.type == "cpu" and arrays["probs"].shape[1] == 71
    assert results["n_records"] == len(arrays["ecg_id"])


def test_rebuilding_from_a_checkpoint_needs_no_imagenet_file(tmp_path):
    from medml.data.ptbxl import scp_statements_frame
    from medml.pipelines.ecg.data import SCP_BRANCH

    config = EcgConfig()  # no labels yet: PTB-XL's 71 statements in scp_statements.csv order
    config.model.imagenet_weights = str(tmp_path / "trained-elsewhere.pth")  # absent on the prediction machine
    module = EcgPipeline(config).build_module(None)
    assert module.model.fusion.in_features == 1037 and module.model.fusion.out_features == 71
    assert module.label_names == scp_statements_frame().index.astype(str).tolist() == list(SCP_BRANCH)
    assert [len(module.model.label_index(b)) for b in ("rhythm", "morphology", "global")] == [16, 52, 3]
    for branch in ("rhythm", "morphology", "global"):  # each branch's labels in statement row order
        index = module.model.label_index(branch).tolist()
        assert index == sorted(index) and all(SCP_BRANCH[module.label_names[i]] == branch for i in index)


# ----- issue 13/14: scores, calibration, thresholds, explanations, SR ---------------------------------------------


def _read_predictions(out: Path, codes: list[str]) -> dict[str, np.ndarray]:
    saved = list(csv.DictReader((out / "predictions_test.csv").open()))
    return {
        key: np.array([[float(r[f"{key}_{c}"]) for c in codes] for r in saved]) for key in ("prob", "raw_prob", "label")
    } | {"ecg_id": np.array([int(r["ecg_id"]) for r in saved])}


def test_evaluation_reports_weighted_and_branch_logit_scores(ecg_run, ptbxl):
    from medml.data.ptbxl import ECGDataset
    from medml.metrics import multilabel_auroc

    out = ecg_run.demo.eval_dir
    metrics = json.loads((out / "metrics.json").read_text())
    module = ecg_run.module
    assert metrics["data"].startswith("synthetic")  # never titled PTB-XL
    for sets in ("label_sets", "branch_logit_sets"):
        for name in ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm"):
            res = metrics[sets][name]
            assert res["weighted_ci"][0] <= res["weighted"] <= res["weighted_ci"][1], (sets, name)
    # branch-logit scores are each label's own branch classifier, recomputed here from the branch outputs
    rows = ptbxl.split_indices("test")
    direct = module.predict_dataset(ECGDataset(ptbxl, rows, "all"), device=torch.device("cpu"))
    with torch.no_grad():
        signal = torch.as_tensor(np.array(ptbxl.signals[rows]))
        outputs = module(signal)
    for branch in ("rhythm", "morphology", "global"):
        index = module.model.label_index(branch).numpy()
        probs = torch.sigmoid(outputs[f"{branch}/logits"]).numpy()
        expected = multilabel_auroc(direct["target"][:, index], probs, n_bootstrap=0)
        assert metrics["branch_logit_sets"][f"branch_{branch}"]["macro"] == pytest.approx(expected["macro"], abs=1e-6)
        assert metrics["branch_logit_sets"][f"branch_{branch}"]["weighted"] == pytest.approx(
            expected["weighted"], abs=1e-6
        )
    table = (out / "benchmark_table.md").read_text()
    assert "weighted (fused)" in table and "branch logits" in table and "synthetic" in table


def test_calibrated_probabilities_with_raw_beside_them(ecg_run, ptbxl):
    from medml.data.ptbxl import ECGDataset
    from medml.metrics.calibration import calibration_summary

    out = ecg_run.demo.eval_dir
    module = ecg_run.module
    saved = _read_predictions(out, module.label_names)
    scale, shift = module.calibration_scale.numpy(), module.calibration_bias.numpy()
    assert not np.allclose(scale, 1.0)  # fitted on fold 9
    raw = np.clip(saved["raw_prob"], 1e-6, 1 - 1e-6)
    expected = 1 / (1 + np.exp(-(scale * np.log(raw / (1 - raw)) + shift)))
    np.testing.assert_allclose(saved["prob"], expected, atol=2e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"]["raw"] == pytest.approx(
        calibration_summary(saved["label"], saved["raw_prob"]), abs=1e-4
    )
    assert metrics["calibration"]["calibrated"] == pytest.approx(
        calibration_summary(saved["label"], saved["prob"]), abs=1e-4
    )
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the fit lowers fold 9's negative log-likelihood (T = 1 is one of the candidates it searched)
    val = module.predict_dataset(ECGDataset(ptbxl, ptbxl.split_indices("val"), "all"), device=torch.device("cpu"))

    def nll(p):
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return float(-(val["target"] * np.log(p) + (1 - val["target"]) * np.log(1 - p)).mean())

    assert nll(val["probs"]) < nll(val["raw_probs"])
    # prediction writes both, and decides on the calibrated one
    probs = list(csv.DictReader((ecg_run.demo.pred_dir / "wfdb_lvh" / "probabilities.csv").open()))
    assert {"probability", "raw_probability", "threshold", "decision"} <= set(probs[0])
    assert all(int(r["decision"]) == (float(r["probability"]) >= float(r["threshold"]) - 0.005) for r in probs)


def test_thresholds_have_minimum_positives_and_test_fold_sens_spec(ecg_run, ptbxl):
    out = ecg_run.demo.eval_dir
    module = ecg_run.module
    rows = list(csv.DictReader((out / "thresholds_test.csv").open()))
    assert [r["label"] for r in rows] == module.label_names
    val_pos = ptbxl.labels[ptbxl.split_indices("val")].sum(0)
    minimum = ecg_run.pipeline.config.model.threshold_min_positives
    thresholds = module.thresholds.numpy()
    fallback = {round(float(t), 2) for t, n in zip(thresholds, val_pos) if n < minimum}
    assert len(fallback) == 1  # one documented rule (micro-Fmax) for every label with too few positives
    for row, n in zip(rows, val_pos):
        assert row["threshold_rule"].startswith("fallback") == (n < minimum), row
        if row["sensitivity"] != "nan":
            assert float(row["sensitivity_ci_lo"]) <= float(row["sensitivity"]) <= float(row["sensitivity_ci_hi"])
    saved = _read_predictions(out, module.label_names)
    c = module.label_names.index("SR")
    y, d = saved["label"][:, c] > 0.5, saved["prob"][:, c] >= thresholds[c]
    row = rows[c]
    assert float(row["sensitivity"]) == pytest.approx((d & y).sum() / y.sum(), abs=1e-4)
    assert float(row["specificity"]) == pytest.approx((~d & ~y).sum() / (~y).sum(), abs=1e-4)


def test_explanation_contributions_add_up_to_the_logit(ecg_run):
    out = ecg_run.demo.pred_dir
    checked = 0
    for path in out.glob("*/explanation.json"):
        explanation = json.loads(path.read_text())
        probs = {r["label"]: r for r in csv.DictReader((path.parent / "probabilities.csv").open())}
        assert "synthetic" in explanation["model_note"]
        for entry in explanation["labels"]:
            parts = entry["bias"] + sum(entry["branch_contributions"].values())
            assert parts == pytest.approx(entry["logit"], abs=1e-5)
            raw = float(probs[entry["label"]]["raw_probability"])
            assert entry["raw_probability"] == pytest.approx(raw, abs=1e-5)
            windows = [w["contribution"] for w in entry["windows"] if w["branch"] == "morphology"]
            assert len(windows) == ecg_run.module.model.branches["morphology"].latent_length - 2
            assert sum(windows) == pytest.approx(entry["branch_contributions"]["morphology"], abs=1e-5)
            for proto in entry["prototypes"]:
                assert proto["own_label"] and proto["label"] == entry["label"]
                if proto["window_contributions"] is not None:
                    assert sum(proto["window_contributions"]) == pytest.approx(proto["contribution"], abs=1e-5)
            for proto in entry["other_label_prototypes"]:
                assert not proto["own_label"] and entry["label"] in proto["why"]
            shown = entry["prototypes"] + entry["other_label_prototypes"]
            assert entry["shown_contribution"] == pytest.approx(sum(p["contribution"] for p in shown), abs=1e-5)
            checked += 1
    assert checked >= 6


def test_receptive_field_is_measured(ecg_run):
    from medml.pipelines.ecg.explain import receptive_fields

    module = ecg_run.module
    branch = module.model.branches["morphology"]
    before, after = receptive_fields(module)["morphology"]
    assert before > 0 and after > 0  # a latent window sees far more than its nominal 0.93-s span
    w = 14  # mid-record, so the field lies inside the 10 s
    start, end = branch.raw_start(w), branch.raw_start(w) + branch.segment_length
    x = torch.randn(1, 12, branch.signal_length)

    def patch(signal):
        with torch.no_grad():
            return branch.latent(signal)[..., w : w + branch.prototype_length]

    base = patch(x)
    inside, outside = x.clone(), x.clone()
    inside[..., start - before] += 50.0  # the first sample the field reaches changes the window
    outside[..., start - before - 1] += 50.0  # one sample further does not
    assert (patch(inside) - base).abs().max() > 0
    torch.testing.assert_close(patch(outside), base, rtol=0, atol=1e-6)
    far = x.clone()
    far[..., end + after] += 50.0
    torch.testing.assert_close(patch(far), base, rtol=0, atol=1e-6)
    assert (before + branch.segment_length + after) / 100 > 2 * branch.segment_length / 100


def test_contradictory_positives_are_flagged_and_dicom_inputs_get_an_sr(ecg_run):
    import highdicom as hd
    import pydicom

    from medml.pipelines.ecg.explain import contradictions

    assert contradictions({"STACH", "SBRAD", "LVH"}) == ["STACH+SBRAD: sinus tachycardia and sinus bradycardia"]
    assert contradictions({"SR", "LVH"}) == []
    out = ecg_run.demo.pred_dir
    for row in csv.DictReader((out / "predictions.csv").open()):
        assert row["contradictions"] == "; ".join(contradictions(positives(row)))
        explanation = json.loads((out / row["case"] / "explanation.json").read_text())
        assert explanation["contradictions"] == contradictions(positives(row))
        sr_path = out / row["case"] / "findings_sr.dcm"
        if not row["SOPInstanceUID"]:
            assert not sr_path.exists()  # WFDB inputs: no DICOM to reference
            continue
        sr = pydicom.dcmread(sr_path)
        source = pydicom.dcmread(ecg_run.demo.root / "clinical" / f"{row['case']}.dcm", stop_before_pixels=True)
        assert sr.StudyInstanceUID == source.StudyInstanceUID == row["StudyInstanceUID"]
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPClassUID == source.SOPClassUID
        findings = dict(_coded_findings(sr))
        assert len(findings) == 71  # every label: present or absent, coded SCPECG, beside its probability
        assert {code for code, value in findings.items() if value == "Present"} == positives(row)
        assert "Electrocardiographic procedure" in str(sr)
        hd.sr.srread(sr_path)  # highdicom reads it back as an SR
        if shutil.which("dciodvfy"):  # dicom3tools' validator, where installed
            checked = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True)
            errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
            assert not errors, errors[:3]


def positives(row: dict[str, str]) -> set[str]:
    return set(row["positive_labels"].split(";")) - {""}


def _coded_findings(dataset):
    """(SCP code, Present/Absent) of every qualitative evaluation in an SR content tree."""
    for item in getattr(dataset, "ContentSequence", []):
        name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if item.ValueType == "CODE" and name is not None and name.CodingSchemeDesignator == "SCPECG":
            yield name.CodeValue, item.ConceptCodeSequence[0].CodeMeaning
        yield from _coded_findings(item)


def test_run_records_the_global_batch_and_projects_from_last_weights(ecg_run):
    record = json.loads((ecg_run.run_dir / "run.json").read_text())
    assert record["global_batch"] == {"per_device": 32, "processes": 1, "accumulate": 1, "global": 32}
    for branch in ("rhythm", "morphology", "global"):
        done = json.loads(next((ecg_run.run_dir / "stages").glob(f"*-joint_{branch}/done.json")).read_text())
        assert done["best_checkpoint"].endswith("last.ckpt")
    fusion = json.loads(next((ecg_run.run_dir / "stages").glob("*-fusion/done.json")).read_text())
    assert not fusion["best_checkpoint"].endswith("last.ckpt")
