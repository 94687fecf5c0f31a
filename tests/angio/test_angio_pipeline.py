"""End-to-end tests of the angio pipeline: tiny training on synthetic MOSXAV, evaluation, folder prediction.

The tiny run is the session's shared demo run (``tiny_demo("angio")``: the synthetic MOSXAV of the pipeline's own
``synthesize``, trained once per test session with the tiny recipe), so these tests train nothing themselves.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medml.config import load_config
from medml.demo import DemoRun
from medml.engine.checkpoint import load_checkpoint
from medml.errors import DataLayoutError
from medml.registry import get_pipeline

TINY = Path(__file__).resolve().parents[2] / "pipelines" / "angio" / "tiny.yaml"


@pytest.fixture(scope="session")
def angio_demo(tiny_demo) -> DemoRun:
    return tiny_demo("angio")


@pytest.fixture(scope="session")
def loaded_angio(angio_demo: DemoRun):
    return load_checkpoint(angio_demo.checkpoint, expect_pipeline="angio")


def test_registered_with_paper_defaults():
    cls = get_pipeline("angio")
    assert cls.input_kinds == ("dicom_multiframe", "video", "frames")
    paper = load_config(cls.Config, TINY.parent / "paper.yaml")
    assert paper == cls.Config()  # paper.yaml repeats the defaults


def test_datamodule_streams(synthetic_mosxav: Path):
    cls = get_pipeline("angio")
    pipeline = cls(load_config(cls.Config, TINY, ["data.labelled_fraction=0.25"]))
    dm = pipeline.datamodule(synthetic_mosxav)
    dm.setup("fit")
    summary = dm.split_summary
    assert summary["n_labelled"] == 5 and summary["n_unlabelled"] == 95  # 5 train videos x 4 annotated frames
    assert not {f.split("/")[0] for f in summary["labelled_frames"]} & set(summary["val"]["videos"])
    loader = dm.train_dataloader()
    batch, _, _ = next(iter(loader))
    assert set(batch) == {"labelled", "unlabelled"}
    size = pipeline.config.data.size
    assert batch["labelled"]["image"].shape[-2:] == (size, size) and batch["labelled"]["label"].dtype == torch.int64
    assert batch["unlabelled"]["image_weak"].shape == batch["unlabelled"]["image_strong"].shape
    assert len(loader) == 95 // 4  # max_size_cycle: the epoch follows the longer (unlabelled) stream


def test_layout_error(tmp_path: Path):
    with pytest.raises(DataLayoutError):
        get_pipeline("angio")().check_layout(tmp_path)


def test_training_logs_val_dice_and_keeps_teacher(angio_demo: DemoRun):
    run = angio_demo.run_dir
    assert (run / "model.ckpt").is_file()
    metrics = json.loads((run / "run.json").read_text())["final_metrics"]  # the TrainResult's metrics
    assert "val_dice" in metrics and 0.0 <= metrics["val_dice"] <= 1.0
    header = (run / "metrics.csv").read_text().splitlines()[0]
    columns = (
        "val_dice",
        "train_loss_unsup_step",
        "train_loss_diff_step",
        "train_loss_proto_step",
        "train_loss_proto_consistency_step",
        "train_loss_proto_align_step",
    )
    for column in columns:
        assert column in header
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    proto = [float(r["train_loss_proto_step"]) for r in rows if r.get("train_loss_proto_step")]
    assert proto and max(proto) > 0 and proto[-1] > 0  # the prototype loss acts during training
    state = torch.load(run / "model.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("teacher.") for k in state) and state["prototypes_initialised"].all()


def test_evaluate_test_split_reaches_dice(loaded_angio, angio_demo: DemoRun, tmp_path: Path):
    pipeline, module = loaded_angio
    metrics = pipeline.evaluate(module, angio_demo.data_dir, "test", tmp_path)
    # Default predictor: the denoised label latent decoded, plus the segmenter's log-softmax (model.prior_residual):
    # 0.858 mean Dice on the tiny run (0.758 without the residual prior, 0.679 before the warm-up and class-balanced
    # pseudo-labels); the model card reports it.
    assert metrics["dice_mean"] >= 0.78, metrics
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["others"] == "ignore" and saved["frames"] == 60
    assert saved["predictor"] == "diffusion" and saved["shared_video_noise"] is True
    # Every test frame is annotated: 19 adjacent pairs per video; the predictions agree from frame to frame about as
    # much as the ground truth does (no sampling flicker).
    temporal = saved["temporal_consistency"]
    assert 0.8 <= temporal["ratio"] <= 1.1 and metrics["temporal_ratio"] == pytest.approx(temporal["ratio"])
    assert saved["temporal_per_video"]["v00"]["pairs"] == 19
    assert math.isfinite(metrics["hd95_mean"])
    assert set(saved["per_video"]) == {"v00", "v01", "v02"}
    rows = list(csv.DictReader((tmp_path / "per_video.csv").open()))
    assert [r["video"] for r in rows] == ["v00", "v01", "v02", "ALL"]
    assert float(rows[-1]["mean_foreground_dice"]) == pytest.approx(metrics["dice_mean"], abs=1e-4)
    assert all(math.isfinite(saved["per_video"][v]["mean_foreground"]["dice"]) for v in ("v00", "v01", "v02"))
    assert (tmp_path / "test_examples.png").stat().st_size > 0


def test_predict_clinical_folder(loaded_angio, tmp_path: Path):
    import pydicom

    from medml.engine.predict import predict_folder

    pipeline, module = loaded_angio
    inputs = pipeline.synthesize_clinical(tmp_path / "in", seed=1)
    out = tmp_path / "out"
    summary = predict_folder(pipeline, module, inputs, out, progress=False)
    assert summary.done == 3 and summary.failed >= 1
    failures = (out / "failures.csv").read_text()
    assert "corrupt_cine" in failures
    cine = pydicom.dcmread(inputs / "xa_cine.dcm")
    n_frames = int(cine.NumberOfFrames)
    case_dirs = {p.name: p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert len(case_dirs) == 3
    for case_dir in case_dirs.values():
        pngs = sorted((case_dir / "labels").glob("*.png"))
        assert len(pngs) == n_frames
        for name in ("labels.nii.gz", "overlay.mp4", "areas.csv"):
            assert (case_dir / name).stat().st_size > 0, name
    dicom_dir = next(p for p in case_dirs.values() if (p / "seg.dcm").exists())
    assert sum((p / "seg.dcm").exists() for p in case_dirs.values()) == 1  # SEG only for the DICOM input

    import nibabel as nib

    from medml.data.mosxav import read_mask

    image = nib.load(dicom_dir / "labels.nii.gz")
    # The grid `medml convert` gives the cine: (columns, rows, frames), LPS axes in RAS (tests/test_outputs_alignment).
    assert image.shape == (cine.Columns, cine.Rows, n_frames)
    assert image.header.get_zooms() == pytest.approx((0.3, 0.3, 1.0), rel=1e-4)
    assert np.allclose(np.diag(image.affine), (-0.3, -0.3, 1.0, 1.0))
    first = read_mask(sorted((dicom_dir / "labels").glob("*.png"))[0])
    assert first.shape == (cine.Rows, cine.Columns) and first.max() <= 4
    assert np.array_equal(np.asarray(image.dataobj)[:, :, 0].T, first)
    # The synthetic cine has ImagerPixelSpacing 0.3 only: areas are detector-plane and say so.
    areas = list(csv.DictReader((dicom_dir / "areas.csv").open()))
    assert len(areas) == n_frames and "vessel_mm2" not in areas[0]
    assert areas[0]["spacing_source"] == "ImagerPixelSpacing"
    assert float(areas[0]["vessel_mm2_detector"]) == pytest.approx(int(areas[0]["vessel_px"]) * 0.3 * 0.3, rel=1e-3)

    # The SEG references the cine and its frames.
    seg = pydicom.dcmread(dicom_dir / "seg.dcm")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    refs = set()
    for group in seg.PerFrameFunctionalGroupsSequence:
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == cine.SOPInstanceUID
        refs.add(int(source.ReferencedFrameNumber))
    assert refs == set(range(1, n_frames + 1))  # every frame of the cine is referenced
    # Detector geometry: the cine has ImagerPixelSpacing only, so the SEG claims no PixelSpacing or SliceThickness.
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" not in shared
    assert "PixelSpacing" not in seg and "SliceThickness" not in seg
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert "vessel" in segments
    balloon = segments["balloon"].SegmentedPropertyTypeCodeSequence[0]
    assert (balloon.CodingSchemeDesignator, balloon.CodeValue) == ("SCT", "310362005")  # angioplasty (balloon) catheter
    property_codes = [
        (
            s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
        )
        for s in segments.values()
    ]
    assert len(set(property_codes)) == len(property_codes)  # no two segments share a code

    import highdicom as hd

    hd_seg = hd.seg.segread(dicom_dir / "seg.dcm")
    assert hd_seg.SOPInstanceUID == seg.SOPInstanceUID
    assert cine.SOPInstanceUID in {uid for _, _, uid in hd_seg.get_source_image_uids()}


def test_prototype_anchoring_flags_corrupted_pseudo_labels(loaded_angio, angio_demo: DemoRun):
    """Small noisy pseudo-label stress test on the trained demo: corrupt 30 % of the 16-px tiles of (perfect)
    pseudo-labels of validation frames, and check that the prototype weights of the teacher's denoised latents are
    lower on the corrupted pixels, so the weighted pseudo-labels agree better with the truth than the raw ones.
    (The full stress test, final Dice with vs without anchoring, is ``benchmarks/angio_ssl.py --corrupt``.)"""
    from medml.data.mosxav import MOSXAV, AngioFrames
    from medml.pipelines.angio import losses as L_

    pipeline, module = loaded_angio
    cfg = pipeline.config
    items = MOSXAV(angio_demo.data_dir).items("val", annotated_only=True)[:8]
    frames = AngioFrames(items, size=cfg.data.size, others=cfg.data.others)
    x = torch.stack([frames[i]["image"] for i in range(len(frames))])
    truth = torch.stack([frames[i]["label"] for i in range(len(frames))])
    net = module.inference_net()
    with torch.no_grad():
        latent = net.sample(x, module.ddim, module.sample_steps, noise=module.inference_noise(x, 0))["latent"]
    probs = L_.prototype_probabilities(
        latent, module.prototypes, module.prototypes_initialised, cfg.loss.proto_temperature
    )
    noisy = L_.corrupt_labels(truth, 0.3, torch.Generator().manual_seed(0))
    _, weight = L_.prototype_denoise(noisy, probs, module.prototypes_initialised, "weight")
    valid = truth != 255
    wrong = (noisy != truth) & valid
    right = (noisy == truth) & valid
    assert wrong.float().mean() > 0.01
    assert weight[wrong].mean() < weight[right].mean() - 0.1
    raw_accuracy = right.sum() / valid.sum()
    weighted_accuracy = weight[right].sum() / weight[valid].sum()
    assert weighted_accuracy > raw_accuracy
