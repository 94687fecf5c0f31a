"""`inspect` and `convert`: what ``medml inspect`` / ``medml convert`` print and write."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medml.errors import GeometryError, UnsupportedFormatError
from medml.io import convert, format_inspect, inspect, read_video, read_volume


@pytest.fixture(scope="module")
def clinic_folder(tmp_path_factory, two_series_folder, xa_cine, dicom_ecg_file):
    root = tmp_path_factory.mktemp("clinic")
    shutil.copytree(two_series_folder, root / "ct")
    shutil.copy(xa_cine[0], root / "cine.dcm")
    shutil.copy(dicom_ecg_file, root / "ecg.dcm")
    (root / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"1.2")
    return root


def test_inspect_reports_every_case_and_error(clinic_folder):
    report = inspect(clinic_folder)
    json.dumps(report)  # JSON-serialisable as is
    by_type = {}
    for case in report["cases"]:
        by_type.setdefault(case["type"], []).append(case)
    assert len(by_type["volume"]) == 2 and len(by_type["video"]) == 1 and len(by_type["ecg"]) == 1
    oblique = next(c for c in by_type["volume"] if c["shape"][0] == 7)
    assert oblique["spacing"] == pytest.approx([0.7, 0.8, 2.5]) and len(oblique["orientation"]) == 3
    assert by_type["video"][0]["frame_time_ms"] == pytest.approx(66.7)
    assert by_type["ecg"][0]["fs"] == 500 and by_type["ecg"][0]["leads"][:3] == ["I", "II", "III"]
    assert [e["path"].endswith("broken.dcm") for e in report["errors"]] == [True]
    text = json.dumps(report)
    assert "Synthetic" not in text and "SYN0001" not in text  # no patient name or ID in the report
    printed = format_inspect(report)
    assert "ERROR" in printed and "66.7 ms/frame" in printed


def test_convert_series_to_nifti_with_sidecar(tmp_path, two_series_folder):
    series = tmp_path / "series"
    series.mkdir()
    for path in two_series_folder.iterdir():
        if pydicom.dcmread(path, stop_before_pixels=True).SeriesNumber == 3:
            shutil.copy(path, series / path.name)
    out = convert(series, tmp_path / "ct.nii.gz")
    volume = read_volume(series)
    np.testing.assert_allclose(nib.load(out).affine, volume.affine, atol=1e-4)
    sidecar = json.loads((tmp_path / "ct.json").read_text())
    assert sidecar["SeriesInstanceUID"] == volume.meta["SeriesInstanceUID"] and "PatientName" not in sidecar

    # and back: a NIfTI mask on the same grid becomes a DICOM SEG referencing the slices
    mask = (volume.array > 0).astype(np.uint8)
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), volume.affine), mask_path)
    seg = pydicom.dcmread(convert(series, tmp_path / "seg.dcm", mask=mask_path))
    assert seg.Modality == "SEG" and seg.NumberOfFrames == mask.shape[0]
    shifted = tmp_path / "shifted.nii.gz"
    moved = volume.affine.copy()
    moved[:3, 3] += 5
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), moved), shifted)
    with pytest.raises(GeometryError, match="affine"):
        convert(series, tmp_path / "bad.dcm", mask=shifted)


def test_convert_cine(tmp_path, xa_cine):
    path, frames = xa_cine
    out = convert(path, tmp_path / "cine.nii")
    data = np.asanyarray(nib.load(out).dataobj)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), frames)
    sidecar = json.loads((tmp_path / "cine.json").read_text())
    np.testing.assert_allclose(sidecar["frame_times_ms"], read_video(path).frame_times_ms)
    with pytest.raises(UnsupportedFormatError):
        convert(path, tmp_path / "cine.png")


def test_convert_sidecar_holds_no_source_path(tmp_path):
    import SimpleITK as sitk

    folder = tmp_path / "Doe_Jane_MRN4711"
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)), str(folder / "scan.mha"))
    convert(folder / "scan.mha", tmp_path / "a.nii.gz")
    text = (tmp_path / "a.json").read_text()
    assert "MRN4711" not in text and str(tmp_path) not in text
    assert json.loads(text)["source"] == "scan"
    convert(folder / "scan.mha", tmp_path / "b.nii.gz", anonymize_paths=False)
    sidecar = json.loads((tmp_path / "b.json").read_text())
    assert sidecar["source"] == "scan.mha" and "MRN4711" not in json.dumps(sidecar)


def test_inspect_turns_any_reader_crash_into_an_error_line(clinic_folder, monkeypatch):
    import importlib

    commands = importlib.import_module("medml.io.commands")
    real = commands.read_case

    def crashing(case):
        if case.kind == "dicom_ecg":
            raise RecursionError("maximum recursion depth exceeded")
        return real(case)

    monkeypatch.setattr(commands, "read_case", crashing)
    report = inspect(clinic_folder)
    assert len(report["cases"]) == 3
    crash = next(e for e in report["errors"] if "case_id" in e)
    assert crash["reason"] == "unexpected RecursionError: maximum recursion depth exceeded"
    assert crash["path"].endswith("ecg.dcm")
