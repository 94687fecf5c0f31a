"""NIfTI keeps the source geometry; DICOM SEG and SR reference their sources and validate; reports hold no names."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medml.io import (
    Finding,
    SegmentSpec,
    discover,
    read_volume,
    source_datasets_in_volume_order,
    write_csv,
    write_dicom_seg,
    write_dicom_sr,
    write_nifti,
    write_report_json,
)
from medml.io.seg import CATEGORY_ANATOMY, CATEGORY_DEVICE

TABLE = [
    SegmentSpec(1, "vessel", CATEGORY_ANATOMY, ("59820001", "SCT", "Blood vessel"), (220, 40, 40)),
    SegmentSpec(3, "catheter", CATEGORY_DEVICE, ("19923001", "SCT", "Catheter"), (40, 200, 40)),
]


@pytest.fixture(scope="module")
def oblique_case(two_series_folder):
    cases, _ = discover(two_series_folder)
    return next(c for c in cases if len(c.paths) == 7)


def assert_segments_described(seg) -> None:
    """Both SEG builders describe the segments alike: labels, codes, algorithm and a colour that round-trips."""
    import highdicom as hd

    assert [s.SegmentLabel for s in seg.SegmentSequence] == [spec.name for spec in TABLE][: len(seg.SegmentSequence)]
    for number, (item, spec) in enumerate(zip(seg.SegmentSequence, TABLE, strict=False), start=1):
        assert item.SegmentNumber == number and item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == spec.property_type[0]
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == spec.category[0]
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(item.RecommendedDisplayCIELabValue)).to_rgb()
        np.testing.assert_allclose(rgb, spec.color, atol=1)


# Each DICOM object is written once by a fixture: its test checks it by reading it back, and
# test_dciodvfy_finds_no_errors validates the same file, so a machine without dicom3tools skips only the validation.
@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("written")


@pytest.fixture(scope="module")
def series_mask(oblique_case):
    volume = read_volume(oblique_case)
    mask = np.zeros(volume.array.shape, np.uint8)
    mask[1:4, 5:10, 5:12] = 1
    mask[2, 0:3, 0:3] = 3
    return volume, mask


@pytest.fixture(scope="module")
def series_seg(out_dir, oblique_case, series_mask):
    volume, mask = series_mask
    sources = source_datasets_in_volume_order(oblique_case.paths)
    assert [str(ds.SOPInstanceUID) for ds in sources] == volume.meta["SOPInstanceUIDs"]
    return write_dicom_seg(sources, mask, TABLE, out_dir / "seg.dcm")


@pytest.fixture(scope="module")
def cine_masks(xa_cine):
    masks = np.zeros(xa_cine[1].shape, np.uint8)
    masks[:, 5:15, 4:20] = 1
    masks[2, 0:4, 0:4] = 3
    return masks


@pytest.fixture(scope="module")
def cine_seg(out_dir, xa_cine, cine_masks):
    source = pydicom.dcmread(xa_cine[0], stop_before_pixels=True)
    return write_dicom_seg(source, cine_masks, TABLE, out_dir / "cine_seg.dcm")


FINDINGS = [
    Finding(("196601008", "SCT", "Emphysema"), True, 0.91),
    Finding(("36118008", "SCT", "Pneumothorax"), False, 0.04),
]


@pytest.fixture(scope="module")
def sr_file(out_dir, oblique_case):
    sources = source_datasets_in_volume_order(oblique_case.paths)
    return write_dicom_sr(sources, FINDINGS, out_dir / "sr.dcm", algorithm_name="ct-ssg")


def _radiograph():
    from pathlib import Path

    from pydicom.data import get_testdata_file

    return pydicom.dcmread(
        Path(get_testdata_file("DICOMDIR")).parent / "77654033" / "CR1" / "6154", stop_before_pixels=True
    )


@pytest.fixture(scope="module")
def radiograph_mask():
    source = _radiograph()
    mask = np.zeros((source.Rows, source.Columns), np.uint8)
    mask[100:200, 50:150] = 1
    return mask


@pytest.fixture(scope="module")
def radiograph_seg(out_dir, radiograph_mask):
    return write_dicom_seg(_radiograph(), radiograph_mask, TABLE[:1], out_dir / "cr_seg.dcm")


@pytest.fixture(scope="module")
def enhanced_ct(oblique_case):
    import highdicom as hd

    return hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(p) for p in oblique_case.paths],
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )


@pytest.fixture(scope="module")
def enhanced_seg(out_dir, enhanced_ct):
    mask = np.zeros((enhanced_ct.NumberOfFrames, enhanced_ct.Rows, enhanced_ct.Columns), np.uint8)
    mask[2:5, 4:9, 4:9] = 1
    return write_dicom_seg(enhanced_ct, mask, TABLE[:1], out_dir / "enh_seg.dcm")


@pytest.mark.parametrize("written", ["series_seg", "cine_seg", "sr_file", "radiograph_seg", "enhanced_seg"])
def test_dciodvfy_finds_no_errors(request, written):
    path = request.getfixturevalue(written)  # written before the skip: a writer failure is never hidden
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_nifti_round_trip_nibabel_and_simpleitk_agree(tmp_path, oblique_case):
    volume = read_volume(oblique_case)
    path = write_nifti(volume.array, volume, tmp_path / "ct.nii.gz")
    image = nib.load(path)
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj).transpose(2, 1, 0), volume.array)
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(itk.GetOrigin(), volume.origin, atol=1e-4)
    np.testing.assert_allclose(itk.GetSpacing(), volume.spacing, atol=1e-5)
    np.testing.assert_allclose(np.reshape(itk.GetDirection(), (3, 3)), volume.direction, atol=1e-5)
    again = read_volume(path)
    np.testing.assert_array_equal(again.array, volume.array)
    np.testing.assert_allclose(again.affine, volume.affine, atol=1e-4)


def test_nifti_matches_dcm2niix(tmp_path, oblique_case):
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix not installed")
    source = tmp_path / "series"
    source.mkdir()
    for path in oblique_case.paths:
        shutil.copy(path, source / path.name)
    subprocess.run(
        ["dcm2niix", "-z", "y", "-f", "ref", "-o", str(tmp_path), str(source)], check=True, capture_output=True
    )
    volume = read_volume(source)
    ours = nib.as_closest_canonical(nib.load(write_nifti(volume.array, volume, tmp_path / "ours.nii.gz")))
    reference = nib.as_closest_canonical(nib.load(tmp_path / "ref.nii.gz"))
    # dcm2niix stores rows flipped; in canonical (RAS) voxel order both must be the same image at the same place
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(reference.dataobj))


def test_seg_for_a_series(series_seg, series_mask):
    import highdicom as hd

    volume, mask = series_mask
    seg = hd.seg.segread(series_seg)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["vessel", "catheter"]
    assert_segments_described(seg)
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == set(volume.meta["SOPInstanceUIDs"])
    for k, uid in enumerate(volume.meta["SOPInstanceUIDs"]):
        labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], combine_segments=True, relabel=False)
        # combine_segments returns segment numbers (1..N); ours are 1 -> 1 and 3 -> 2
        np.testing.assert_array_equal(labels[0], np.select([mask[k] == 1, mask[k] == 3], [1, 2], 0))


def test_seg_for_a_cine_references_frames(cine_seg, xa_cine, cine_masks):
    path, frames = xa_cine
    source = pydicom.dcmread(path, stop_before_pixels=True)
    masks, out = cine_masks, cine_seg
    seg = pydicom.dcmread(out)
    assert_segments_described(seg)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and "FrameOfReferenceUID" not in seg
    assert seg.NumberOfFrames == 2 * len(frames)
    pixels = seg.pixel_array
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        segment = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        label = TABLE[segment - 1].label
        np.testing.assert_array_equal(pixels[index], masks[ref.ReferencedFrameNumber - 1] == label)
    import highdicom as hd

    assert hd.seg.segread(out).number_of_segments == 2


def test_seg_rejects_unknown_labels(tmp_path, xa_cine):
    path, frames = xa_cine
    masks = np.zeros(frames.shape, np.uint8)
    masks[0, 0, 0] = 7
    with pytest.raises(ValueError, match="7"):
        write_dicom_seg(pydicom.dcmread(path, stop_before_pixels=True), masks, TABLE, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_sr_findings(sr_file, oblique_case):
    import highdicom as hd

    sources = source_datasets_in_volume_order(oblique_case.paths)
    path = sr_file
    sr = hd.sr.srread(path)
    text = str(pydicom.dcmread(path))
    assert "Emphysema" in text and "Pneumothorax" in text and "Present" in text and "Absent" in text
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    evaluations = groups[0].get_qualitative_evaluations()
    assert [e.name.meaning for e in evaluations] == ["Emphysema", "Pneumothorax"]
    assert [e.value.meaning for e in evaluations] == ["Present", "Absent"]
    assert [round(m.value, 2) for m in groups[0].get_measurements()] == [0.91, 0.04]
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert evidence == {str(ds.SOPInstanceUID) for ds in sources}


def test_reports_drop_patient_identifiers(tmp_path):
    rows = [
        {
            "case_id": "c1",
            "PatientName": "Doe^Jane",
            "PatientID": "123",
            "SeriesInstanceUID": "1.2.3",
            "prob": 0.25,
            "labels": ["a", "b"],
        }
    ]
    write_csv(rows, tmp_path / "p.csv")
    with open(tmp_path / "p.csv") as fh:
        read = list(csv.DictReader(fh))
    assert read == [{"case_id": "c1", "SeriesInstanceUID": "1.2.3", "prob": "0.25", "labels": "a b"}]
    write_report_json({"cases": rows, "score": float("nan")}, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert "Doe" not in text and "123" not in text and json.loads(text)["score"] is None
    write_csv(rows, tmp_path / "k.csv", keep_patient=True)
    assert "Doe^Jane" in (tmp_path / "k.csv").read_text()


def test_seg_for_a_2d_radiograph(radiograph_seg, radiograph_mask):
    source, mask = _radiograph(), radiograph_mask
    seg = pydicom.dcmread(radiograph_seg)
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID and "ReferencedFrameNumber" not in ref
    np.testing.assert_array_equal(seg.pixel_array, mask)


def test_seg_for_an_enhanced_multiframe(enhanced_seg, enhanced_ct):
    import highdicom as hd

    enhanced = enhanced_ct
    seg = hd.seg.segread(enhanced_seg)
    frames = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    assert sorted(frames) == list(range(1, enhanced.NumberOfFrames + 1))
