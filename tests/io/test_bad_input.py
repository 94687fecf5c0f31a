"""Every bad input gives a medml error naming the file and the reason; nothing crashes with a bare traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from medml.errors import (
    AbsurdSizeError,
    CorruptFileError,
    MedmlError,
    MissingDecoderError,
    UnsupportedFormatError,
)
from medml.io import discover, read_case, read_image, read_volume
from medml.io.synthetic import write_ct_series
from medml.io.types import EcgRecord, Image2D, Video, Volume

PYDICOM_FILES = sorted(p for p in get_testdata_files() if Path(p).is_file())


def test_every_pydicom_test_file_loads_or_fails_cleanly():
    loaded, failed = 0, 0
    for name in PYDICOM_FILES:
        path = Path(name)
        try:
            cases, failures = discover(path)
        except MedmlError:
            failed += 1
            continue
        for _, reason in failures:
            assert reason and "\n" not in reason
            failed += 1
        for case in cases:
            try:
                record = read_case(case)
            except MedmlError as exc:
                assert exc.path and exc.reason and "\n" not in exc.reason, (name, exc)
                failed += 1
                continue
            data = {Volume: "array", Image2D: "array", Video: "frames", EcgRecord: "signal"}[type(record)]
            assert getattr(record, data).size > 0, name
            loaded += 1
    # the corpus holds CT/MR/US/CR images, compressed syntaxes and an ECG: most of it must load
    assert loaded >= 60 and failed >= 10, (loaded, failed)


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
    ],
)
def test_compressed_files_decode_like_uncompressed(compressed, reference):
    from pydicom.data import get_testdata_file

    decoded = read_image(get_testdata_file(compressed)).array
    np.testing.assert_array_equal(decoded, read_image(get_testdata_file(reference)).array)
    assert decoded.dtype.isnative


def test_ybr_jpeg_comes_back_as_rgb():
    from pydicom.data import get_testdata_file

    rgb = read_image(get_testdata_file("SC_rgb_rle.dcm")).array  # lossless RGB reference of the same picture
    ybr = read_image(get_testdata_file("SC_rgb_dcmtk_+eb+cy+np.dcm")).array  # lossy JPEG, YBR_FULL_422
    assert ybr.shape == rgb.shape and ybr.shape[-1] == 3
    assert np.abs(ybr.astype(int) - rgb.astype(int)).mean() < 5  # lossy, but the colours are right


def test_monochrome1_is_inverted():
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("DICOMDIR")).parent / "77654033" / "CR1" / "6154"
    raw = pydicom.dcmread(path).pixel_array.astype(float)
    shown = read_image(path).array.astype(float)
    assert np.corrcoef(raw.ravel(), shown.ravel())[0, 1] < -0.99  # same image, bright and dark swapped


def test_truncated_file(tmp_path):
    from pydicom.data import get_testdata_file

    with pytest.raises(CorruptFileError) as info:
        read_image(get_testdata_file("MR_truncated.dcm"))
    assert "MR_truncated.dcm" in str(info.value)
    path = write_ct_series(tmp_path, shape=(1, 32, 32))[0]
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_image(path)


def test_not_dicom_with_dcm_name(tmp_path):
    (tmp_path / "scan.dcm").write_bytes(b"GIF89a not really" * 20)
    with pytest.raises(UnsupportedFormatError) as info:
        read_image(tmp_path / "scan.dcm")
    assert "scan.dcm" in str(info.value)


def _one_slice(tmp_path) -> tuple[Path, pydicom.Dataset]:
    path = write_ct_series(tmp_path, shape=(1, 16, 16))[0]
    return path, pydicom.dcmread(path)


def test_missing_pixel_data(tmp_path):
    path, ds = _one_slice(tmp_path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(UnsupportedFormatError, match="no pixel data"):
        read_image(path)


def test_absurd_dimensions(tmp_path):
    path, ds = _one_slice(tmp_path)
    ds.Rows = 60000
    ds.save_as(path)
    with pytest.raises(AbsurdSizeError):
        read_image(path)


def test_unknown_transfer_syntax_names_the_problem(tmp_path):
    path, ds = _one_slice(tmp_path)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.99.1"  # a private syntax no plugin knows
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MissingDecoderError, match="1.2.826.0.1.3680043.99.1"):
        read_image(path)


def test_missing_decoder_names_the_package(monkeypatch):
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder

    decoder = get_decoder("1.2.840.10008.1.2.5")
    monkeypatch.setattr(decoder, "_available", {})  # as if no RLE plugin were installed
    with pytest.raises(MissingDecoderError, match="pylibjpeg-rle"):
        read_image(get_testdata_file("MR_small_RLE.dcm"))


def test_folder_with_several_cases_asks_for_one(two_series_folder):
    with pytest.raises(UnsupportedFormatError, match="2 cases"):
        read_volume(two_series_folder)
