"""Headers that lie: refused with one-line medml errors before any large allocation; files named by headers stay in
their folder; malformed values read correctly or refused, never mis-read (issue 8, items 2, 4, 5, 6)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medml.errors import (
    ConfigError,
    CorruptFileError,
    GeometryError,
    MedmlError,
    OutsideInputError,
    ReadError,
    SignalError,
    TooLargeError,
)
from medml.io import discover, read_ecg, read_image, read_video, read_volume, set_memory_budget
from medml.io.guard import BUDGET_ENV, memory_budget
from medml.io.nifti import read_itk_image, read_nifti
from medml.io.synthetic import write_ct_series


@pytest.fixture
def budget():
    """Set a small memory budget for one test and restore the default afterwards."""
    yield set_memory_budget
    set_memory_budget(None)


def _one_line(exc: MedmlError) -> None:
    assert exc.path and exc.reason and "\n" not in str(exc)


# ---------------------------------------------------------------------------------------------------- memory budget
def test_budget_setting_env_and_default(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    default = memory_budget()
    assert default == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    monkeypatch.setenv(BUDGET_ENV, "123456")
    assert memory_budget() == 123456
    set_memory_budget(1000)
    assert memory_budget() == 1000  # the explicit setting wins over the environment
    set_memory_budget(None)
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(ConfigError, match=BUDGET_ENV):
        memory_budget()
    with pytest.raises(ConfigError):
        set_memory_budget(-5)


def test_series_above_budget_is_refused(tmp_path, budget):
    folder = tmp_path / "ct"
    write_ct_series(folder, shape=(3, 32, 32))
    assert read_volume(folder).array.shape == (3, 32, 32)
    budget(3 * 32 * 32 * 2 - 1)
    with pytest.raises(TooLargeError, match="above the budget") as info:
        read_volume(folder)
    _one_line(info.value)


def test_nifti_above_budget_is_refused(tmp_path, budget):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)), path)
    budget(20 * 20 * 20 * 2 - 1)
    with pytest.raises(TooLargeError):
        read_volume(path)


def test_tiny_nii_gz_claiming_a_large_volume_is_refused_without_allocating(tmp_path):
    # the probe's 92-byte .nii.gz that took 1.1 GB: a header promising 1000x1000x1100 bytes and no data
    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 1100))
    header.set_data_dtype(np.uint8)
    path = tmp_path / "lie.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\x00" * 4)
    assert path.stat().st_size < 200
    with pytest.raises(CorruptFileError, match="truncated") as info:
        read_volume(path)
    _one_line(info.value)


def test_truncated_uncompressed_nifti_is_refused(tmp_path):
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_nifti(path)


def _jpeg_dicom_claiming(tmp_path: Path, rows: int, cols: int, frames: int) -> Path:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path)
    return path


def test_jpeg_dicom_header_asking_for_terabytes_is_refused(tmp_path):
    path = _jpeg_dicom_claiming(tmp_path, 16000, 16000, 20000)
    with pytest.raises(TooLargeError, match="budget") as info:
        read_video(path)
    _one_line(info.value)
    with pytest.raises(TooLargeError):
        read_image(path)


def test_png_declaring_20000_squared_is_refused(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    )
    path = tmp_path / "huge.png"
    path.write_bytes(png)
    with pytest.raises(TooLargeError) as info:
        read_image(path)
    _one_line(info.value)


def test_png_above_budget_is_refused(tmp_path, budget):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    budget(10_000)
    with pytest.raises(TooLargeError):
        read_image(path)


def test_video_above_budget_is_refused(tmp_path, budget):
    import imageio.v2 as imageio

    path = tmp_path / "v.mp4"
    with imageio.get_writer(str(path), fps=10, codec="libx264", macro_block_size=1, ffmpeg_log_level="error") as w:
        for _ in range(30):
            w.append_data(np.zeros((32, 32, 3), np.uint8))
    assert read_video(path).frames.shape[0] == 30
    budget(10 * 32 * 32 * 3)
    with pytest.raises(TooLargeError) as info:
        read_video(path)
    _one_line(info.value)


# ---------------------------------------------------------------------------------------------------- containment
def _wfdb_record(folder: Path, name: str = "rec") -> Path:
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(1000) / 500
    signal = np.stack([np.sin(2 * np.pi * (1 + k / 10) * t) for k in range(12)], axis=1)
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    wfdb.wrsamp(
        name, fs=500, units=["mV"] * 12, sig_name=leads, p_signal=signal, fmt=["16"] * 12, write_dir=str(folder)
    )
    return folder / f"{name}.hea"


def test_wfdb_signal_file_outside_the_folder_is_refused(tmp_path):
    hea = _wfdb_record(tmp_path / "in")
    assert read_ecg(hea).signal.shape == (12, 1000)
    (tmp_path / "in" / "rec.dat").rename(tmp_path / "secret.dat")
    hea.write_text(hea.read_text().replace("rec.dat", "../secret.dat"))
    with pytest.raises(ReadError) as info:  # wfdb's header syntax has no folders: refused as malformed or outside
        read_ecg(hea)
    _one_line(info.value)


def test_wfdb_signal_file_linked_out_of_the_folder_is_refused(tmp_path):
    hea = _wfdb_record(tmp_path / "in")
    (tmp_path / "in" / "rec.dat").rename(tmp_path / "secret.dat")
    (tmp_path / "in" / "rec.dat").symlink_to(tmp_path / "secret.dat")
    with pytest.raises(ReadError, match="outside"):  # refused by discovery or by the reader, whichever sees it first
        read_ecg(hea)


@pytest.mark.parametrize("fs", ["0", "-500"])
def test_wfdb_zero_or_negative_sampling_rate_is_refused_even_unchecked(tmp_path, fs):
    hea = _wfdb_record(tmp_path / "in")
    first, *rest = hea.read_text().splitlines()
    fields = first.split()
    fields[2] = fs
    hea.write_text("\n".join([" ".join(fields), *rest]) + "\n")
    with pytest.raises(SignalError, match="sampling frequency"):
        read_ecg(hea, check=False)


def _mhd(folder: Path, data_name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mhd = folder / "v.mhd"
    mhd.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementSpacing = 1 1 1\n"
        f"ElementDataFile = {data_name}\n"
    )
    return mhd


def test_mhd_data_file_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.raw").write_bytes(bytes(64))
    mhd = _mhd(tmp_path / "in", "../secret.raw")
    with pytest.raises(OutsideInputError) as info:
        read_itk_image(mhd)
    _one_line(info.value)
    mhd = _mhd(tmp_path / "abs", str(tmp_path / "secret.raw"))
    with pytest.raises(OutsideInputError):
        read_itk_image(mhd)


def test_mhd_data_file_inside_the_folder_is_read(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "v.raw").write_bytes(bytes(range(64)))
    volume = read_itk_image(_mhd(tmp_path / "in", "v.raw"))
    assert volume.array.shape == (4, 4, 4) and volume.array.ravel()[5] == 5


def test_dicomdir_entries_pointing_outside_are_never_read(tmp_path):
    outside = tmp_path / "outside"
    write_ct_series(outside, shape=(2, 8, 8))
    inside = tmp_path / "in"
    inside.mkdir()
    ds = pydicom.dcmread(get_testdata_file("DICOMDIR"))
    for record in ds.DirectoryRecordSequence:
        if "ReferencedFileID" in record:
            record.ReferencedFileID = ["..", "outside", sorted(os.listdir(outside))[0]]
    ds.save_as(inside / "DICOMDIR")
    cases, _ = discover(inside)
    assert all(outside not in p.parents for case in cases for p in case.paths)


# ---------------------------------------------------------------------------------------------------- bad values
def _set_raw(ds: pydicom.Dataset, tag: int, vr: str, value: bytes) -> None:
    """Store a value as read from a file, unconverted (pydicom refuses to convert 'abc' into a DS on assignment)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, True, True)


def _slice(tmp_path: Path, n: int = 1) -> tuple[list[Path], list[pydicom.Dataset]]:
    paths = write_ct_series(tmp_path / "ct", shape=(n, 16, 16))
    return paths, [pydicom.dcmread(p) for p in paths]


@pytest.mark.parametrize(
    ("tag", "value", "error"),
    [
        ("PixelSpacing", [0, 0], GeometryError),
        ("PixelSpacing", ["NaN", "NaN"], GeometryError),
        ("ImagePositionPatient", ["NaN", "0", "0"], GeometryError),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1], GeometryError),
        ("RescaleSlope", "abc", CorruptFileError),
        ("RescaleSlope", "0", CorruptFileError),
    ],
)
def test_bad_series_geometry_and_rescale_are_one_line_errors(tmp_path, tag, value, error):
    paths, datasets = _slice(tmp_path, 3)
    for path, ds in zip(paths, datasets, strict=True):
        if tag == "RescaleSlope":
            _set_raw(ds, 0x00281053, "DS", value.encode().ljust(4))
        else:
            ds[tag].value = value
        ds.save_as(path)
    with pytest.raises(error) as info:
        read_volume(paths[0].parent)
    _one_line(info.value)


def test_multi_valued_rows_is_a_one_line_error(tmp_path):
    paths, datasets = _slice(tmp_path)
    ds = datasets[0]
    ds["Rows"].VR = "US"
    ds.Rows = [16, 16]
    ds.save_as(paths[0])
    with pytest.raises(CorruptFileError, match="Rows") as info:
        read_image(paths[0])
    _one_line(info.value)


def test_non_numeric_rescale_slope_in_a_2d_image(tmp_path):
    paths, datasets = _slice(tmp_path)
    _set_raw(datasets[0], 0x00281053, "DS", b"abc ")
    datasets[0].save_as(paths[0])
    with pytest.raises(CorruptFileError, match="RescaleSlope") as info:
        read_image(paths[0])
    _one_line(info.value)


def test_zero_or_nan_pixel_spacing_of_a_2d_image_is_unknown_not_zero(tmp_path):
    paths, datasets = _slice(tmp_path)
    datasets[0].PixelSpacing = [0, "NaN"]
    datasets[0].save_as(paths[0])
    assert read_image(paths[0]).spacing is None


def test_non_numeric_frame_time_falls_back_and_says_so(xa_cine, tmp_path):
    path, frames = xa_cine
    ds = pydicom.dcmread(path)
    _set_raw(ds, 0x00181063, "DS", b"fast")
    for key in ("FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate"):
        if key in ds:
            del ds[key]
    ds.save_as(tmp_path / "cine.dcm")
    video = read_video(tmp_path / "cine.dcm")
    assert video.meta["frame_time_from_file"] is False
    np.testing.assert_array_equal(video.frames, frames)


def _nested_sequence_dicom(path: Path, depth: int) -> None:
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    seq_open = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item_open = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_close = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    with open(path, "ab") as fh:
        fh.write((seq_open + item_open) * depth + (item_close + seq_close) * depth)


def test_deeply_nested_sequence_is_a_one_line_error(tmp_path):
    path = tmp_path / "deep.dcm"
    _nested_sequence_dicom(path, 5000)
    with pytest.raises(MedmlError) as info:
        read_image(path)
    _one_line(info.value)


def test_garbage_nii_gz_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)) * 4)
    for reader in (read_volume, read_nifti):
        with pytest.raises(MedmlError) as info:
            reader(path)
        _one_line(info.value)


@pytest.mark.parametrize("content", [b"", b"hello, not a NIfTI at all" * 30])
def test_zero_byte_or_non_nifti_nii_gz_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(content) if content else b"")
    for reader in (read_volume, read_nifti):
        with pytest.raises(ReadError) as info:
            reader(path)
        _one_line(info.value)


def test_zero_voxel_nifti_is_refused(tmp_path):
    path = tmp_path / "empty.nii"
    nib.save(nib.Nifti1Image(np.zeros((0, 10, 10), np.uint8), np.eye(4)), path)
    with pytest.raises(CorruptFileError, match="without voxels"):
        read_volume(path)


@pytest.mark.parametrize("bad", ["zero_pixdim", "nan_sform"])
def test_nifti_with_zero_or_nan_spacing_is_refused_or_read_as_nibabel_does(tmp_path, bad):
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)), path)
    data = bytearray(path.read_bytes())  # patch the written header: nibabel would fix the values on saving
    if bad == "zero_pixdim":
        data[80:92] = struct.pack("<3f", 0, 0, 0)  # pixdim[1:4]
        data[252:256] = struct.pack("<2h", 0, 0)  # qform_code, sform_code: use pixdim
    else:
        data[254:256] = struct.pack("<h", 1)  # sform_code
        data[280:284] = struct.pack("<f", float("nan"))  # srow_x[0]
    path.write_bytes(bytes(data))
    if bad == "zero_pixdim":  # nibabel (like ITK) reads zero voxel sizes as 1 mm; never a zero spacing
        assert read_volume(path).spacing == (1.0, 1.0, 1.0)
        return
    with pytest.raises(GeometryError) as info:
        read_volume(path)
    _one_line(info.value)


def test_one_bit_dicom_is_read_correctly(tmp_path):
    from pydicom.pixels import pack_bits

    paths, datasets = _slice(tmp_path)
    ds = datasets[0]
    bits = (np.arange(16 * 16).reshape(16, 16) % 3 == 0).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    for key in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if key in ds:
            del ds[key]
    ds.PixelData = pack_bits(bits)
    ds["PixelData"].VR = "OB"
    ds.save_as(paths[0])
    np.testing.assert_array_equal(read_image(paths[0]).array, bits)


def test_dicom_without_preamble_is_read_like_with_it(tmp_path):
    paths, datasets = _slice(tmp_path)
    reference = read_image(paths[0]).array
    raw = tmp_path / "raw"
    ds = datasets[0]
    from pydicom.filebase import DicomFileLike

    with open(raw, "wb") as fh:
        out = DicomFileLike(fh)
        out.is_little_endian, out.is_implicit_VR = True, True
        pydicom.filewriter.write_dataset(out, ds)  # no preamble, no file meta: the dataset alone, implicit VR
    assert raw.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(raw).array, reference)
