"""Write small but realistic clinical DICOM files for tests and demos.

`write_ct_series` writes a single-frame CT series (one file per slice), `write_xa_cine` an X-ray angiography
multi-frame cine, `write_dicom_ecg` a 12-lead waveform ECG. The files carry the tags real scanners write (UIDs,
geometry, rescale, frame timing, waveform channel definitions) so the same readers handle them and real data.
Patient name and ID are synthetic placeholders.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from medml.io.types import STANDARD_LEADS
from medml.utils.files import atomic_path

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
XA_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.1"
TWELVE_LEAD_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"

# SCPECG lead codes (CID 3001) used in ChannelSourceSequence.
LEAD_CODES = {
    "I": "5.6.3-9-1",
    "II": "5.6.3-9-2",
    "III": "5.6.3-9-61",
    "aVR": "5.6.3-9-62",
    "aVL": "5.6.3-9-63",
    "aVF": "5.6.3-9-64",
    "V1": "5.6.3-9-3",
    "V2": "5.6.3-9-4",
    "V3": "5.6.3-9-5",
    "V4": "5.6.3-9-6",
    "V5": "5.6.3-9-7",
    "V6": "5.6.3-9-8",
}


def _base_dataset(sop_class: str, modality: str, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    today = datetime.date(2024, 1, 2).strftime("%Y%m%d")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Manufacturer = "medml synthetic"
    return ds


def _ds(value: float) -> DSfloat:
    """A decimal string value within DICOM's 16-character limit (what real scanners write)."""
    return DSfloat(float(value), auto_format=True)


def _save(ds: Dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_ct_series(
    folder: str | Path,
    shape: tuple[int, int, int] = (8, 32, 32),
    spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
    origin: tuple[float, float, float] = (-100.0, -120.0, 50.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    hu: np.ndarray | None = None,
    *,
    seed: int = 0,
    shuffle_instance_numbers: bool = False,
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_number: int = 1,
    rescale: tuple[float, float] = (1.0, -1024.0),
    file_names: str = "uid",
    transfer_syntax: str | None = None,
) -> list[Path]:
    """Write a CT series, one file per slice, and return the paths in slice order.

    Args:
        folder: output folder (created).
        shape: (z, y, x) voxels.
        spacing: (x, y, z) in mm; z is the distance between slice centres along the slice normal.
        origin: LPS position of the first voxel.
        orientation: ImageOrientationPatient (row cosines then column cosines); may be oblique.
        hu: optional (z, y, x) Hounsfield values; default a smooth random phantom.
        seed: random seed for the phantom and the shuffling.
        shuffle_instance_numbers: give InstanceNumber in random order, so readers must sort by position.
        series_uid, study_uid: fixed UIDs (fresh ones by default).
        series_number: SeriesNumber tag.
        rescale: (slope, intercept) stored in the files.
        file_names: "uid" (random names without extension, as PACS exports do) or "index" (``slice_000.dcm``).
        transfer_syntax: compress with this transfer syntax UID (needs the matching encoder plugin).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    if hu is None:
        zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
        hu = np.where(xx**2 + yy**2 + 0.5 * zz**2 < 0.6, 40.0, -1000.0) + rng.normal(0, 20, shape)
    slope, intercept = rescale
    stored = np.clip(np.round((np.asarray(hu, float) - intercept) / slope), 0, 4095).astype(np.uint16)
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    instance_numbers = np.arange(1, nz + 1)
    if shuffle_instance_numbers:
        rng.shuffle(instance_numbers)
    paths = []
    for k in range(nz):
        sop_uid = generate_uid()
        ds = _base_dataset(CT_IMAGE_STORAGE, "CT", study_uid, series_uid, sop_uid)
        ds.SeriesNumber = series_number
        ds.InstanceNumber = int(instance_numbers[k])
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [_ds(v) for v in np.asarray(origin) + k * spacing[2] * normal]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = _ds(spacing[2])
        ds.SliceLocation = _ds(np.dot([float(v) for v in ds.ImagePositionPatient], normal))
        ds.KVP = 120
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = stored[k].tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax, encoding_plugin="pylibjpeg" if transfer_syntax.endswith(".5") else "")
        name = f"slice_{k:03d}.dcm" if file_names == "index" else sop_uid.replace(".", "")[-16:]
        path = folder / name
        _save(ds, path)
        paths.append(path)
    return paths


def write_xa_cine(
    path: str | Path,
    frames: np.ndarray,
    frame_time_ms: float | Sequence[float] = 66.7,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    pixel_spacing_mm: float = 0.3,
) -> Path:
    """Write a (T, H, W) uint8 sequence as an X-ray angiography multi-frame DICOM cine.

    Args:
        path: output file.
        frames: (T, H, W) grey frames (uint8; other types are scaled to 0..255).
        frame_time_ms: one FrameTime for all frames, or one increment per frame (FrameTimeVector).
        study_uid, series_uid: fixed UIDs (fresh ones by default).
        pixel_spacing_mm: ImagerPixelSpacing.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        lo, hi = float(frames.min()), float(frames.max())
        frames = np.round((frames - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
    n, rows, cols = frames.shape
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    ds = _base_dataset(XA_IMAGE_STORAGE, "XA", study_uid, series_uid, generate_uid())
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = n
    if np.ndim(frame_time_ms) == 0:
        ds.FrameTime = float(frame_time_ms)
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
        ds.CineRate = round(1000.0 / float(frame_time_ms))
    else:
        increments = [float(t) for t in frame_time_ms]
        if len(increments) != n:
            raise ValueError("FrameTimeVector needs one value per frame")
        ds.FrameTimeVector = increments
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTimeVector")
    ds.RecommendedDisplayFrameRate = int(ds.get("CineRate", 15))
    ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.DistanceSourceToDetector = 1100
    ds.DistanceSourceToPatient = 750
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = 30
    ds.PositionerSecondaryAngle = 20
    ds.RadiationSetting = "GR"
    ds.KVP = 80
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelData = frames.tobytes()
    path = Path(path)
    _save(ds, path)
    return path


def write_dicom_ecg(
    path: str | Path,
    signal_mv: np.ndarray,
    fs: float,
    lead_order: Sequence[str] = STANDARD_LEADS,
    *,
    sensitivity_uv: float = 1.0,
    study_uid: str | None = None,
) -> Path:
    """Write a 12-lead resting ECG as a DICOM waveform (General ECG Waveform... 12-Lead ECG IOD).

    Args:
        path: output file.
        signal_mv: (leads, samples) in mV, rows in ``lead_order``.
        fs: sampling frequency in Hz.
        lead_order: the lead name of each row; any order (readers must reorder to the standard one).
        sensitivity_uv: microvolts per stored integer unit (ChannelSensitivity, in uV).
        study_uid: fixed StudyInstanceUID.
    """
    signal_mv = np.asarray(signal_mv, float)
    if signal_mv.shape[0] != len(lead_order):
        raise ValueError("one lead name per signal row")
    ds = _base_dataset(TWELVE_LEAD_ECG_STORAGE, "ECG", study_uid or generate_uid(), generate_uid(), generate_uid())
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = "20240102120000"
    stored = np.clip(np.round(signal_mv * 1000.0 / sensitivity_uv), -32768, 32767).astype("<i2")
    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(lead_order)
    group.NumberOfWaveformSamples = signal_mv.shape[1]
    group.SamplingFrequency = fs
    group.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for lead in lead_order:
        ch = Dataset()
        source = Dataset()
        source.CodeValue = LEAD_CODES[lead]
        source.CodingSchemeDesignator = "SCPECG"
        source.CodingSchemeVersion = "1.3"
        source.CodeMeaning = f"Lead {lead}"
        ch.ChannelSourceSequence = DicomSequence([source])
        ch.ChannelSensitivity = sensitivity_uv
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "uV", "UCUM", "microvolt"
        ch.ChannelSensitivityUnitsSequence = DicomSequence([unit])
        ch.ChannelSensitivityCorrectionFactor = 1
        ch.ChannelBaseline = 0
        ch.ChannelSampleSkew = 0
        ch.WaveformBitsStored = 16
        channels.append(ch)
    group.ChannelDefinitionSequence = DicomSequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = stored.T.tobytes()  # samples are interleaved channel by channel
    ds.WaveformSequence = DicomSequence([group])
    path = Path(path)
    _save(ds, path)
    return path
