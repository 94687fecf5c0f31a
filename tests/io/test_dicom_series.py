"""DICOM series to volume: sorting, rescale and geometry against SimpleITK; geometry problems reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medml.errors import GeometryError, MedmlError
from medml.io import discover, read_volume
from medml.io.synthetic import write_ct_series


def sitk_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = (
        reader.GetGDCMSeriesFileNames(str(folder), series_uid)
        if series_uid
        else reader.GetGDCMSeriesFileNames(str(folder))
    )
    reader.SetFileNames(names)
    return reader.Execute()


def assert_same_as_sitk(volume, image: sitk.Image, exact: bool = True) -> None:
    reference = sitk.GetArrayFromImage(image)
    assert volume.array.shape == reference.shape
    if exact:
        np.testing.assert_array_equal(volume.array, reference)
    else:
        np.testing.assert_allclose(volume.array, reference, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(volume.spacing, image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(volume.origin, image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(volume.direction, np.reshape(image.GetDirection(), (3, 3)), atol=1e-6)


def test_two_series_in_one_folder_are_two_cases(two_series_folder):
    cases, failures = discover(two_series_folder.parent)
    assert failures == []
    series = [c for c in cases if c.kind == "dicom_series"]
    assert sorted(len(c.paths) for c in series) == [5, 7]
    assert len({c.case_id for c in series}) == 2
    for case in series:
        # the folder is named after the patient; case ids must not carry the name or the ID
        assert "synthetic" not in case.case_id.lower() and "syn0001" not in case.case_id.lower()
        assert "patient" not in case.case_id.lower()


@pytest.mark.parametrize("n_slices", [7, 5])
def test_series_equals_simpleitk(two_series_folder, n_slices):
    cases, _ = discover(two_series_folder)
    case = next(c for c in cases if len(c.paths) == n_slices)
    volume = read_volume(case)
    assert_same_as_sitk(volume, sitk_series(two_series_folder, case.meta["SeriesInstanceUID"]))
    assert volume.warnings == []
    # per-slice SOPInstanceUIDs follow the array order, i.e. increasing position along the normal
    normal = volume.direction[:, 2]
    positions = [
        float(np.dot(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient, normal))
        for uid in volume.meta["SOPInstanceUIDs"]
        for p in case.paths
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid
    ]
    assert positions == sorted(positions) and len(positions) == n_slices


def test_shuffled_instance_numbers_do_not_change_order(two_series_folder):
    cases, _ = discover(two_series_folder)
    case = next(c for c in cases if len(c.paths) == 7)
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in case.paths]
    assert numbers != sorted(numbers)  # the fixture really is shuffled
    volume = read_volume(case)
    stored = [pydicom.dcmread(p) for p in case.paths]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in stored}
    for k, uid in enumerate(volume.meta["SOPInstanceUIDs"]):
        ds = by_uid[uid]
        expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[k], expected)


def test_fractional_rescale_gives_float_equal_to_simpleitk(tmp_path):
    write_ct_series(tmp_path, shape=(4, 12, 10), rescale=(0.5, -1000.0))
    volume = read_volume(tmp_path)
    assert volume.array.dtype.kind == "f"
    assert_same_as_sitk(volume, sitk_series(tmp_path), exact=False)


def _positions(folder: Path) -> list[Path]:
    return sorted(
        folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )


def _set_z(path: Path, z: float) -> None:
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
    ds.save_as(path)


def test_missing_slice_is_reported_and_strict_raises(tmp_path):
    write_ct_series(tmp_path, shape=(6, 8, 8), spacing=(1, 1, 2.0), origin=(0, 0, 0))
    _positions(tmp_path)[3].unlink()
    volume = read_volume(tmp_path)
    assert volume.array.shape[0] == 5
    assert any("missing" in w for w in volume.warnings)
    # SimpleITK spreads the first-to-last distance evenly; so do we
    assert volume.spacing[2] == pytest.approx(10.0 / 4)
    with pytest.raises(GeometryError, match="missing"):
        read_volume(tmp_path, strict=True)


def test_uneven_spacing_is_reported(tmp_path):
    write_ct_series(tmp_path, shape=(5, 8, 8), spacing=(1, 1, 2.0), origin=(0, 0, 0))
    _set_z(_positions(tmp_path)[2], 4.7)
    volume = read_volume(tmp_path)
    assert any("uneven" in w for w in volume.warnings)


def test_duplicate_positions_raise(tmp_path):
    write_ct_series(tmp_path, shape=(4, 8, 8), spacing=(1, 1, 2.0), origin=(0, 0, 0))
    _set_z(_positions(tmp_path)[2], 2.0)
    with pytest.raises(GeometryError, match="duplicate"):
        read_volume(tmp_path)


def test_gantry_tilt_is_reported(tmp_path):
    write_ct_series(tmp_path, shape=(4, 8, 8), spacing=(1, 1, 2.0), origin=(0, 0, 0))
    for k, path in enumerate(_positions(tmp_path)):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.5 * k, 2.0 * k]  # slices shifted in y as z grows: a tilted gantry
        ds.save_as(path)
    volume = read_volume(tmp_path)
    assert any("tilt" in w for w in volume.warnings)
    with pytest.raises(GeometryError, match="tilt"):
        read_volume(tmp_path, strict=True)


def test_mixed_sizes_raise(tmp_path):
    write_ct_series(tmp_path / "s", shape=(3, 8, 8))
    uid = pydicom.dcmread(next((tmp_path / "s").iterdir())).SeriesInstanceUID
    write_ct_series(tmp_path / "other", shape=(1, 10, 8), origin=(-100, -120, 57.5), series_uid=uid)
    for path in (tmp_path / "other").iterdir():
        shutil.move(str(path), tmp_path / "s" / path.name)
    with pytest.raises(GeometryError, match="mixed slice sizes"):
        read_volume(tmp_path / "s")


def test_single_slice_is_not_a_volume(tmp_path):
    paths = write_ct_series(tmp_path, shape=(1, 8, 8))
    with pytest.raises(GeometryError, match="1 slice"):
        read_volume(paths[0])
    with pytest.raises(GeometryError, match="1 slice"):
        read_volume(discover(tmp_path)[0][0])


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_compressed_series_equal_uncompressed(tmp_path, syntax):
    hu = np.random.default_rng(0).integers(-1000, 2000, (3, 64, 64)).astype(float)
    write_ct_series(tmp_path / "raw", shape=(3, 64, 64), hu=hu)
    try:
        write_ct_series(tmp_path / "cmp", shape=(3, 64, 64), hu=hu, transfer_syntax=syntax)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"no encoder for {syntax}: {exc}")
    np.testing.assert_array_equal(read_volume(tmp_path / "cmp").array, read_volume(tmp_path / "raw").array)


def test_real_series_from_pydicom_equal_simpleitk():
    from pydicom.data import get_testdata_file

    root = Path(get_testdata_file("DICOMDIR")).parent
    folder = root / "98892001" / "CT5N"
    volume = read_volume(folder)
    assert volume.array.shape[0] == len(list(folder.iterdir())) == 5
    assert_same_as_sitk(volume, sitk_series(folder))
    # a radial MR series (one orientation per slice) and two localizers cannot be stacked
    for name in ("98892003/MR700", "98892001/CT2N"):
        with pytest.raises(GeometryError, match="mixed slice orientations"):
            read_volume(root / name)
    # a real series with a gap: the first slice is 200 mm below the rest
    assert any("uneven" in w or "missing" in w for w in read_volume(root / "77654033" / "CT2").warnings)


def test_enhanced_multiframe_equals_series(tmp_path, two_series_folder):
    import highdicom as hd

    cases, _ = discover(two_series_folder)
    case = next(c for c in cases if len(c.paths) == 7)
    series = read_volume(case)
    legacy = [pydicom.dcmread(p) for p in case.paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    volume = read_volume(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(volume.array, series.array)
    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-5)


def test_bad_file_in_series_names_the_file(tmp_path):
    paths = write_ct_series(tmp_path, shape=(3, 8, 8))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 50])
    with pytest.raises(MedmlError) as info:
        read_volume(tmp_path)
    assert info.value.path == str(paths[1])


def test_folder_path_single_pass_and_fallback_agree(tmp_path):
    write_ct_series(tmp_path / "plain", shape=(4, 8, 8), seed=5)
    fast = read_volume(tmp_path / "plain")  # one series only: read in a single pass
    shutil.copytree(tmp_path / "plain", tmp_path / "noisy")
    (tmp_path / "noisy" / "README.txt").write_text("exported by PACS")  # forces the discover() route
    slow = read_volume(tmp_path / "noisy")
    np.testing.assert_array_equal(fast.array, slow.array)
    np.testing.assert_allclose(fast.affine, slow.affine)
    assert fast.meta["SOPInstanceUIDs"] == slow.meta["SOPInstanceUIDs"]


def test_in_place_permutation_matches_fancy_indexing():
    from medml.io.dicom import permute_slices_in_place

    rng = np.random.default_rng(0)
    for n in (2, 5, 17):
        array = rng.integers(0, 1000, (n, 3, 4)).astype(np.int16)
        order = rng.permutation(n)
        expected = array[order]
        permute_slices_in_place(array, order)
        np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_rle.dcm"])
def test_rt_dose_grid_stack_equals_simpleitk(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    volume = read_volume(path)
    assert volume.meta["DoseGridScaling"] == pytest.approx(1e-6)
    assert_same_as_sitk(volume, sitk.ReadImage(path))
