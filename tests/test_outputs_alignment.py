"""Every image output lies on its source's grid, and medml reads its own outputs back.

For each pipeline's shared tiny demo (no extra training), every case's NIfTI is compared with the NIfTI that
``medml convert`` writes for the same source (nibabel and SimpleITK: shape, affine, direction), every DICOM SEG
with its source (size, referenced instance and frames, and the same pixels as the other outputs), every label
image with the source's size. ``ecg`` writes no image; ``dental`` is checked once it is registered.
"""

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from medml import io
from medml.config import load_config, resolve_recipe
from medml.errors import MedmlError
from medml.io.readers import case_for_path
from medml.registry import get_pipeline, list_pipelines

IMAGE_PIPELINES = [n for n in list_pipelines() if n not in ("toy", "ecg")]
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _predicted_cases(name, demo):
    """The demo's clinical cases that were predicted, as the pipeline discovered them."""
    cls = get_pipeline(name)
    pipeline = cls(load_config(cls.Config, resolve_recipe(name, "tiny")))
    cases, _ = pipeline.discover(demo.clinical_dir)
    return [c for c in cases if (demo.pred_dir / c.case_id).is_dir()]


def _source_path(case) -> Path:
    return Path(case.paths[0]).parent if case.kind in ("dicom_series", "frames") else Path(case.paths[0])


def _converted(case, tmp_path) -> Path | None:
    """``medml convert`` of the case's source, or None for sources it does not convert (colour images, videos)."""
    try:
        return io.convert(_source_path(case), tmp_path / f"{case.case_id}.nii.gz")
    except MedmlError:
        return None


def _source_size(case) -> tuple[int, int]:
    """(rows, columns) of the source's frames or slices."""
    record = io.read_case(case)
    if isinstance(record, io.Video):
        return tuple(record.frames.shape[1:3])
    return tuple(record.array.shape[:2] if isinstance(record, io.Image2D) else record.array.shape[1:3])


def _check_nifti(path: Path, reference: Path | None, size: tuple[int, int]) -> np.ndarray:
    out = nib.load(path)
    assert out.ndim == 3, f"{path}: {out.shape}, medml reads 2D and 3D images"
    assert out.shape[:2] == (size[1], size[0]), path  # (x = columns, y = rows, ...)
    if reference is not None:
        ref = nib.load(reference)
        assert out.shape == ref.shape, path
        assert np.allclose(out.affine, ref.affine, atol=1e-4), (path, out.affine, ref.affine)
        a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(reference))
        assert a.GetSize() == b.GetSize()
        assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
        assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
        # medml reads its own output back onto the source's grid
        mine, source = io.read_case(case_for_path(path)), io.read_case(case_for_path(reference))
        assert np.allclose(mine.affine, source.affine, atol=1e-4)
        assert mine.array.shape == source.array.shape
    return np.asarray(out.dataobj)


def _check_seg(path: Path, case, size: tuple[int, int]) -> dict[tuple[int, int], np.ndarray]:
    """SEG frames by (segment number, source frame number), after checking each references the source."""
    seg, source = pydicom.dcmread(path), pydicom.dcmread(case.paths[0], stop_before_pixels=True)
    assert (seg.Rows, seg.Columns) == size, path
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    n_source = int(source.get("NumberOfFrames", 1))
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    frames = {}
    for item, mask in zip(seg.PerFrameFunctionalGroupsSequence, pixels):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID, path
        frame = int(ref.get("ReferencedFrameNumber", 1))
        assert 1 <= frame <= n_source
        frames[(int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber), frame)] = mask.astype(bool)
    return frames


@pytest.mark.parametrize("name", IMAGE_PIPELINES)
def test_image_outputs_lie_on_the_source_grid(name, tiny_demo, tmp_path):
    demo = tiny_demo(name)
    cases = _predicted_cases(name, demo)
    assert cases, name
    for case in cases:
        out_dir = demo.pred_dir / case.case_id
        size = _source_size(case)
        reference = _converted(case, tmp_path)
        labels = None
        for nifti in sorted(out_dir.rglob("*.nii*")):
            labels = _check_nifti(nifti, reference, size)
        for image in sorted([*out_dir.glob("labels/*.png"), *out_dir.glob("segmentation/*.*")]):
            assert Image.open(image).size == (size[1], size[0]), image  # PIL: (width, height)
        if name == "angio":  # one label frame per source frame, the same pixels in every output
            pngs = sorted(out_dir.glob("labels/*.png"))
            assert labels is not None and len(pngs) == labels.shape[2]
            for t, png in enumerate(pngs):
                assert np.array_equal(np.asarray(Image.open(png)), labels[:, :, t].T), png
        seg_path = out_dir / "seg.dcm"
        if seg_path.is_file():
            frames = _check_seg(seg_path, case, size)
            if name == "angio":
                for (segment, frame), mask in frames.items():
                    assert np.array_equal(mask, labels[:, :, frame - 1].T == segment), (seg_path, segment, frame)
            if name == "fundus":  # the segments together cover the optic disc of the REFUGE-style map
                (bmp,) = out_dir.glob("segmentation/*.bmp")
                disc = np.asarray(Image.open(bmp).convert("L")) < 255
                assert np.array_equal(np.any(list(frames.values()), axis=0), disc), seg_path


@pytest.mark.parametrize("name", [n for n in list_pipelines() if n != "toy"])
def test_predictions_carry_the_dicom_uids_of_their_sources(name, tiny_demo):
    demo = tiny_demo(name)
    with (demo.pred_dir / "predictions.csv").open() as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    dicom = [c for c in _predicted_cases(name, demo) if c.kind.startswith("dicom")]
    for case in dicom:
        source = pydicom.dcmread(case.paths[0], stop_before_pixels=True)
        row = rows[case.case_id]
        assert row["StudyInstanceUID"] == source.StudyInstanceUID
        assert row["SeriesInstanceUID"] == source.SeriesInstanceUID
        assert row.get("SOPInstanceUID", "") == ("" if case.kind == "dicom_series" else source.SOPInstanceUID)
        for key in ("PatientName", "PatientID"):
            value = str(source.get(key, "") or "")
            assert key not in row and (len(value) < 3 or value not in (demo.pred_dir / "predictions.csv").read_text())
    if dicom:
        header = (demo.pred_dir / "predictions.csv").read_text().splitlines()[0].split(",")
        present = [u for u in UIDS if u in header]
        assert header[1 : 1 + len(present)] == present and "SeriesInstanceUID" in present


def test_angio_overlays_and_figures_name_the_classes_in_their_colours():
    import matplotlib.pyplot as plt

    from medml.data.mosxav import CLASS_NAMES, PALETTE
    from medml.pipelines.angio.outputs import class_legend, with_legend

    frames, labels = np.zeros((2, 64, 96), np.uint8), np.zeros((2, 64, 96), np.uint8)
    labels[:, 10:20] = 2
    shown, padded = with_legend(frames, labels, CLASS_NAMES[:5])
    strip = shown[0, 64:]
    assert shown.shape[1:3] == padded.shape[1:] and shown.shape[2] == 96 and not padded[:, 64:].any()
    for colour in PALETTE[1:5]:
        assert (strip == colour).all(axis=-1).sum() > 9, colour  # a swatch of every class
    fig = plt.figure()
    class_legend(fig, [labels, np.full((4, 4), 4, np.uint8)])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["contrast_catheter", "balloon"]
    plt.close(fig)
