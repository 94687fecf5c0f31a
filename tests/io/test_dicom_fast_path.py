"""The native little-endian fast path of series reading gives exactly what the pydicom path gives, and declines
(falling back to pydicom) on anything it does not handle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from medml.errors import CorruptFileError
from medml.io import dicom as dicom_module
from medml.io import read_volume
from medml.io.dicom import read_dicom_series
from medml.io.dicom import series as series_module
from medml.io.synthetic import write_ct_series

from .conftest import OBLIQUE

SHAPE = (5, 12, 10)


def _rewrite(paths: list[Path], change: Callable[[Dataset, int], None]) -> None:
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        change(ds, k)
        ds.save_as(path, enforce_file_format=True)


def _set_pixels(ds: Dataset, stored: np.ndarray, bits_allocated: int, bits_stored: int, signed: bool) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.astype(f"<{'i' if signed else 'u'}{bits_allocated // 8}").tobytes()


def _signed_12_bit_with_overlay_bits(ds: Dataset, k: int) -> None:
    values = np.random.default_rng(k).integers(-2048, 2048, SHAPE[1:])
    stored = (values & 0xFFF) | 0xA000  # garbage above BitsStored: must be dropped and the sign extended
    _set_pixels(ds, stored.astype(np.uint16).view(np.int16), 16, 12, True)


def _unsigned_12_bit_with_overlay_bits(ds: Dataset, k: int) -> None:
    values = np.random.default_rng(k).integers(0, 4096, SHAPE[1:])
    _set_pixels(ds, values | 0x5000, 16, 12, False)


def _signed_16_bit_to_uint16(ds: Dataset, k: int) -> None:
    # intercept 32768 makes the output uint16: the int16 -> uint16 wrap-around must come out right
    _set_pixels(ds, np.random.default_rng(k).integers(-32768, 32768, SHAPE[1:]), 16, 16, True)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 32768


def _unsigned_16_bit_to_int32(ds: Dataset, k: int) -> None:
    _set_pixels(ds, np.random.default_rng(k).integers(0, 65536, SHAPE[1:]), 16, 16, False)


def _uint8_slices(ds: Dataset, k: int) -> None:
    _set_pixels(ds, np.random.default_rng(k).integers(0, 256, SHAPE[1:]), 8, 8, False)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0


def _implicit_with_nested_sequences(ds: Dataset, k: int) -> None:
    """Implicit VR, an undefined-length sequence whose item holds another sequence and an icon with its own
    PixelData, and a large private value: the header walk must skip all of them."""
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 2, 2, 8
    icon.PixelData = b"\x07" * 4
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedImageSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.IconImageSequence = Sequence([icon])
    ds.add_new(0x00091010, "OB", bytes(20000))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


VARIANTS: dict[str, tuple[dict, Callable[[Dataset, int], None] | None]] = {
    "shuffled": ({"shuffle_instance_numbers": True}, None),
    "oblique": ({"orientation": OBLIQUE, "shuffle_instance_numbers": True}, None),
    "rescaled": ({"rescale": (2.0, -1024.0)}, None),
    "fractional_rescale": ({"rescale": (0.5, -1000.0)}, None),
    "signed_12": ({}, _signed_12_bit_with_overlay_bits),
    "unsigned_12_overlay": ({}, _unsigned_12_bit_with_overlay_bits),
    "signed_16_to_uint16": ({}, _signed_16_bit_to_uint16),
    "unsigned_16_to_int32": ({}, _unsigned_16_bit_to_int32),
    "uint8": ({}, _uint8_slices),
    "implicit_nested_sequences": ({}, _implicit_with_nested_sequences),
}


def _read_both(paths: list[Path], monkeypatch, require_one_series: bool = True) -> tuple:
    """(fast volume, pydicom volume, number of slices the fast path read in the last len(paths) attempts)."""
    real = dicom_module.native.read_native_slice
    taken = []

    def spy(*args, **kwargs):
        header = real(*args, **kwargs)
        taken.append(header is not None)
        return header

    with monkeypatch.context() as patch:
        patch.setattr(series_module, "read_native_slice", spy)
        fast = read_dicom_series(paths, require_one_series=require_one_series)
    with monkeypatch.context() as patch:
        patch.setattr(series_module, "read_native_slice", lambda *args, **kwargs: None)
        reference = read_dicom_series(paths, require_one_series=require_one_series)
    return fast, reference, sum(taken[-len(paths) :])


def _assert_identical(fast, reference) -> None:
    assert fast.array.dtype == reference.array.dtype
    np.testing.assert_array_equal(fast.array, reference.array)
    assert fast.spacing == reference.spacing and fast.origin == reference.origin
    np.testing.assert_array_equal(fast.direction, reference.direction)
    assert fast.meta == reference.meta and fast.warnings == reference.warnings


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_path_equals_pydicom_path(tmp_path, monkeypatch, variant):
    options, change = VARIANTS[variant]
    paths = write_ct_series(tmp_path, shape=SHAPE, seed=7, **options)
    if change is not None:
        _rewrite(paths, change)
    fast, reference, n_fast = _read_both(paths, monkeypatch)
    assert n_fast == len(paths)  # every slice really went through the fast path
    _assert_identical(fast, reference)
    if variant == "signed_12":
        values = np.random.default_rng(0).integers(-2048, 2048, SHAPE[1:])
        assert int(fast.array.min()) < -1024 - 1000  # sign-extended, not masked to 0..4095
        assert any(np.array_equal(s, values - 1024) for s in fast.array)
    if variant == "uint8":
        assert fast.array.dtype == np.uint8
    if variant == "fractional_rescale":
        assert fast.array.dtype == np.float32


def test_one_fractional_slice_turns_the_series_to_float(tmp_path, monkeypatch):
    paths = write_ct_series(tmp_path, shape=SHAPE, seed=8, shuffle_instance_numbers=True)

    def one_fractional(ds: Dataset, k: int) -> None:
        if k == 3:
            ds.RescaleSlope = 0.5

    _rewrite(paths, one_fractional)
    fast, reference, n_fast = _read_both(paths, monkeypatch, require_one_series=False)
    assert n_fast == len(paths)  # the float re-read went through the fast path too
    assert fast.array.dtype == np.float32 and fast.meta["per_slice_rescale"]
    _assert_identical(fast, reference)


def _mixed_intercepts(ds: Dataset, k: int) -> None:
    # unsigned 12-bit: intercept 0 alone would give uint16, which cannot hold the other slices' negative values
    stored = np.random.default_rng(k).integers(0, 4096, SHAPE[1:])
    stored.flat[0] = 4095 * (k % 2)  # both ends of the stored range occur
    _set_pixels(ds, stored, 16, 12, False)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0 if k == 0 else -1024


def _mixed_slopes(ds: Dataset, k: int) -> None:
    # unsigned 16-bit: slope 1 alone gives uint16; slope 3 reaches 196605 and must not wrap
    stored = np.random.default_rng(k).integers(0, 65536, SHAPE[1:])
    stored.flat[0] = 65535
    _set_pixels(ds, stored, 16, 16, False)
    ds.RescaleSlope, ds.RescaleIntercept = 1 if k == 0 else 3, 0


def _mixed_intercepts_that_fit(ds: Dataset, k: int) -> None:
    # the first slice's int16 holds the others' values too: no re-read needed
    _set_pixels(ds, np.random.default_rng(k).integers(0, 4096, SHAPE[1:]), 16, 12, False)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1000 if k == 0 else -1024


MIXED_RESCALES = {
    "intercepts": (_mixed_intercepts, np.int16),
    "slopes": (_mixed_slopes, np.uint32),
    "intercepts_that_fit": (_mixed_intercepts_that_fit, np.int16),
}


@pytest.mark.parametrize("case", list(MIXED_RESCALES))
def test_slices_with_different_integer_rescales(tmp_path, monkeypatch, case):
    """The output type holds every slice's rescaled values, not just the first's. (SimpleITK takes the first
    slice's type and wraps the others, so the reference here is pydicom's per-slice modality rescale.)"""
    from pydicom.pixels import apply_rescale

    change, dtype = MIXED_RESCALES[case]
    paths = write_ct_series(tmp_path, shape=SHAPE, seed=9, shuffle_instance_numbers=True)
    _rewrite(paths, change)
    expected = []
    for path in paths:  # write_ct_series returns the paths in slice order
        ds = pydicom.dcmread(path)
        expected.append(apply_rescale(ds.pixel_array, ds))
    fast, reference, n_fast = _read_both(paths, monkeypatch, require_one_series=False)
    assert n_fast == len(paths)
    _assert_identical(fast, reference)  # the fast path and the pydicom path agree
    assert fast.array.dtype == dtype and fast.meta["per_slice_rescale"]
    np.testing.assert_array_equal(fast.array.astype(np.float64), np.stack(expected))
    # the public route (folder -> single pass -> fallback) gives the same volume
    np.testing.assert_array_equal(read_volume(tmp_path).array, fast.array)


def test_slices_the_fast_path_declines_are_read_by_pydicom(tmp_path, monkeypatch):
    paths = write_ct_series(tmp_path, shape=SHAPE, seed=3)

    def odd_files(ds: Dataset, k: int) -> None:
        if k == 1:
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # not read by the fast path
        elif k == 2:
            ds.NumberOfFrames = "1"  # harmless, still fast
        elif k == 3:
            ds.WaveformSequence = Sequence([])  # not a plain slice: pydicom decides

    _rewrite(paths, odd_files)
    fast, reference, n_fast = _read_both(paths[:3], monkeypatch)
    assert n_fast == 2
    _assert_identical(fast, reference)
    with pytest.raises(dicom_module.NotOneSeries):
        read_dicom_series(paths, require_one_series=True)


def test_truncated_pixel_data_still_names_the_file(tmp_path):
    paths = write_ct_series(tmp_path, shape=SHAPE, seed=4)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-7])
    with pytest.raises(CorruptFileError) as info:
        read_dicom_series(paths)
    assert info.value.path == str(paths[2])


def test_header_walk_matches_pydicom_on_real_files():
    """The fast header scan on pydicom's real-world test files: it either declines or agrees with pydicom."""
    from pydicom.data import get_testdata_file

    root = Path(get_testdata_file("DICOMDIR")).parent
    files = [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")]
    files += sorted((root / "98892001" / "CT5N").iterdir())
    read = 0
    for path in files:
        ds = pydicom.dcmread(path)
        out = np.empty((int(ds.Rows), int(ds.Columns)), np.float32)
        header = dicom_module.native.read_native_slice(path, out, None)
        if header is None:
            assert str(ds.file_meta.TransferSyntaxUID) not in dicom_module.NATIVE_LITTLE_ENDIAN or ds.get(
                "NumberOfFrames", 1
            ) not in (1, None)
            continue
        read += 1
        slope, intercept = dicom_module.rescale_params(ds)
        np.testing.assert_array_equal(out, ds.pixel_array.astype(np.float32) * slope + intercept)
        assert header.position == tuple(float(v) for v in ds.ImagePositionPatient)
        assert header.orientation == tuple(float(v) for v in ds.ImageOrientationPatient)
        assert header.spacing == tuple(float(v) for v in ds.PixelSpacing)
        assert header.sop_uid == str(ds.SOPInstanceUID)
    assert read >= 6  # CT_small, MR_small and the five CT5N slices


def test_enhanced_multiframe_with_per_frame_rescales_equals_series(tmp_path):
    """Per-frame rescales of one multi-frame object get one type holding them all, as a series' slices do."""
    import highdicom as hd

    paths = write_ct_series(tmp_path / "series", shape=SHAPE, seed=10)
    _rewrite(paths, _mixed_intercepts)
    series = read_volume(tmp_path / "series")
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(p) for p in paths],
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    assert "PixelValueTransformationSequence" in enhanced.PerFrameFunctionalGroupsSequence[1]  # really per frame
    enhanced.save_as(tmp_path / "enhanced.dcm")
    volume = read_volume(tmp_path / "enhanced.dcm")
    assert volume.array.dtype == series.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, series.array)
