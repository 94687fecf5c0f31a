"""Folder discovery classifies files by content, not extension."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from medml.io import discover
from medml.io.discover import sniff


def _nibabel_file(name: str) -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / name


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, two_series_folder, xa_cine, dicom_ecg_file) -> Path:
    import SimpleITK as sitk
    import wfdb
    from PIL import Image
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(two_series_folder, root / "ct")
    shutil.copy(xa_cine[0], root / "angio_run")  # a cine without extension
    shutil.copy(dicom_ecg_file, root / "rest.ecg")  # wrong extension on purpose
    shutil.copy(_nibabel_file("example4d.nii.gz"), root / "vol4d.nii.gz")
    shutil.copy(_nibabel_file("anatomical.nii"), root / "anat.nii")
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    sitk.WriteImage(image, str(root / "scan.mha"))
    sitk.WriteImage(image, str(root / "scan.nrrd"))
    (root / "records").mkdir()
    signal = np.random.default_rng(0).normal(0, 0.3, (1000, 12))
    wfdb.wrsamp(
        "00001_hr",
        fs=500,
        units=["mV"] * 12,
        sig_name=[f"c{i}" for i in range(12)],
        p_signal=signal,
        fmt=["16"] * 12,
        write_dir=str(root / "records"),
    )
    (root / "frames" / "v00").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(root / "frames" / "v00" / f"{k:05d}.jpg")
    (root / "photos").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "photos" / "g0001.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "photos" / "g0002.png")
    (root / "fake.dcm").write_text("this is not DICOM")
    (root / "README.txt").write_text("notes")
    shutil.copy(get_testdata_file("rtplan.dcm"), root / "plan.dcm")
    shutil.copy(get_testdata_file("DICOMDIR"), root / "DICOMDIR")
    shutil.copy(get_testdata_file("ExplVR_LitEndNoMeta.dcm"), root / "nometa")
    return root


def test_kinds_found_by_content(mixed_folder):
    cases, failures = discover(mixed_folder)
    kinds = {c.case_id: c.kind for c in cases}
    assert kinds["angio_run"] == "dicom_multiframe"
    assert kinds["rest.ecg"] == "dicom_ecg"
    assert kinds["vol4d"] == kinds["anat"] == "nifti"
    assert kinds["scan"] in ("mha", "nrrd") and sorted(k for k in kinds.values() if k in ("mha", "nrrd")) == [
        "mha",
        "nrrd",
    ]
    assert kinds["records__00001_hr"] == "wfdb"
    assert kinds["frames__v00"] == "frames"
    assert kinds["photos__g0001"] == kinds["photos__g0002"] == "image"
    assert sum(k == "dicom_series" for k in kinds.values()) == 2
    wfdb_case = next(c for c in cases if c.kind == "wfdb")
    assert {p.suffix for p in wfdb_case.paths} == {".hea", ".dat"}
    frames_case = next(c for c in cases if c.kind == "frames")
    assert [p.name for p in frames_case.paths] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    reasons = {Path(p).name: r for p, r in failures}
    assert "not a DICOM" in reasons["fake.dcm"] or "unrecognised" in reasons["fake.dcm"]
    assert "no pixel data" in reasons["plan.dcm"]
    assert "no pixel data" in reasons["nometa"]  # DICOM without preamble or meta header is still recognised
    assert "README.txt" not in reasons and "DICOMDIR" not in reasons  # sidecars and the index are not failures
    assert len({c.case_id for c in cases}) == len(cases)


def test_single_file_root(xa_cine):
    cases, failures = discover(xa_cine[0])
    assert [c.kind for c in cases] == ["dicom_multiframe"] and failures == []


def test_sniff_does_not_trust_extensions(tmp_path):
    (tmp_path / "x.nii").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    assert sniff(tmp_path / "x.nii") == "image"
    (tmp_path / "y.png").write_bytes(b"NRRD0004\n")
    assert sniff(tmp_path / "y.png") == "nrrd"


def test_binary_signal_is_not_mistaken_for_headerless_dicom(tmp_path):
    # a 16-bit signal whose first sample is 8 starts with the bytes of a group-0008 tag
    (tmp_path / "signal.bin").write_bytes(np.array([8, 300, 200, 100, 50, 20, 10, 5], "<i2").tobytes())
    assert sniff(tmp_path / "signal.bin") is None
    from pydicom.data import get_testdata_file

    assert sniff(Path(get_testdata_file("ExplVR_BigEndNoMeta.dcm"))) == "dicom"


@pytest.fixture()
def hostile_folder(tmp_path) -> Path:
    from tests.test_hostile import make_hostile_folder

    return make_hostile_folder(tmp_path)


def test_a_hostile_folder_never_stops_discovery_and_each_problem_has_its_reason(hostile_folder):
    from medml.io.discover import display_path, is_safe_case_id

    cases, failures = discover(hostile_folder)
    reasons = {display_path(p, hostile_folder): r for p, r in failures}
    assert reasons["loop"] == reasons["ping"] == reasons["pong"] == "symbolic link loop"
    assert "broken symbolic link" in reasons["dangling"]
    assert "outside the input folder" in reasons["out_file"] and "outside the input folder" in reasons["out_dir"]
    assert "not followed" in reasons["up"]
    assert "not a regular file" in reasons["pipe"]
    assert reasons["empty.dcm"] == "empty file (0 bytes)"
    assert "corrupt or truncated gzip" in reasons["garbage.nii.gz"]
    assert "no NIfTI header" in reasons["text.nii.gz"] and "no NIfTI header" in reasons["plain.nii"]
    assert "signal file outside the input folder" in reasons["rec.hea"]
    assert "ElementDataFile names a file outside" in reasons["vol.mhd"]
    assert all("\n" not in r and r.isprintable() for r in reasons.values())
    assert all(k.isprintable() for k in reasons)
    ids = [c.case_id for c in cases]
    assert all(is_safe_case_id(i) for i in ids) and len({i.lower() for i in ids}) == len(ids)
    assert sum(c.kind == "dicom_series" for c in cases) == 1  # inside the folder named predictions.csv
    assert not any(i.lower() in ("predictions.csv", "failures.csv", "run.json") for i in ids)
    assert any(i.startswith("predictions_csv") for i in ids)
    assert max(len(i) for i in ids) <= 100
    assert [c.kind for c in cases if c.case_id.startswith("caf")] == ["dicom_image"]
    assert [c.kind for c in cases if c.case_id.startswith("deep__ddd")] == ["dicom_image"]
    assert discover(hostile_folder)[0] == cases  # stable ids


def test_unreadable_folders_and_files_are_failures_with_the_reason(tmp_path, monkeypatch):
    discover_module = importlib.import_module("medml.io.discover")

    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "a.dcm").write_bytes(b"x" * 300)
    (tmp_path / "secret.nii").write_bytes(b"x" * 400)
    scandir, real_open = discover_module.os.scandir, open

    def refusing_scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    def refusing_open(path, *args, **kwargs):
        if Path(path).name == "secret.nii":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(discover_module.os, "scandir", refusing_scandir)
    monkeypatch.setattr(discover_module, "open", refusing_open, raising=False)
    cases, failures = discover(tmp_path)
    reasons = {Path(p).name: r for p, r in failures}
    assert cases == []
    assert reasons == {
        "locked": "cannot list the folder (Permission denied)",
        "secret.nii": "cannot read the file (Permission denied)",
    }


def test_a_parser_crash_fails_its_file_only(tmp_path, monkeypatch, two_series_folder):
    discover_module = importlib.import_module("medml.io.discover")

    shutil.copytree(two_series_folder, tmp_path / "ct")
    victim = sorted((tmp_path / "ct").iterdir())[0]
    header = discover_module._header

    def crashing(path):
        if path == victim:
            raise RecursionError("maximum recursion depth exceeded while decoding a sequence")
        return header(path)

    monkeypatch.setattr(discover_module, "_header", crashing)
    cases, failures = discover(tmp_path)
    assert failures == [
        (str(victim), "unexpected RecursionError: maximum recursion depth exceeded while decoding a sequence")
    ]
    assert sum(c.kind == "dicom_series" for c in cases) == 2


def test_case_ids_are_safe_stable_and_unique():
    from medml.io.discover import Case, _make_unique, is_safe_case_id, safe_case_id

    hostile = [
        "../../etc/passwd",
        "a/b",
        "x\x00y",
        "\x1b[31mred",
        ".hidden",
        "..",
        "",
        "predictions.csv",
        "FAILURES.CSV",
        "run.json",
        "run.part0of2.json",
        "-rf",
        "é" * 50,
        "A" * 400,
        "A" * 400 + "b",
    ]
    for text in hostile:
        assert is_safe_case_id(safe_case_id(text)), text
        assert safe_case_id(text) == safe_case_id(text)
    assert safe_case_id("A" * 400) != safe_case_id("A" * 400 + "b")
    assert not any(is_safe_case_id(t) for t in hostile)
    cases = [Case(name, "image", [Path(f"/x/{i}")]) for i, name in enumerate(["Scan", "scan", "scan_2", "a/b", "a_b"])]
    _make_unique(cases)
    ids = [c.case_id for c in cases]
    assert len({i.lower() for i in ids}) == 5 and all(is_safe_case_id(i) for i in ids)
