"""DICOM Segmentation writer (the Structured Report writer is `medml.io.sr`).

`write_dicom_seg` writes a BINARY Segmentation object that references its source instances. Sources with
patient-space plane geometry (CT/MR series, enhanced multi-frame) go through highdicom. Sources without it
(XA/XRF cines, 2D photographs) are built with pydicom per the Segmentation IOD, because highdicom 0.28 refuses
multi-frame sources lacking plane geometry and a Frame of Reference: no Frame of Reference module, one
Derivation Image item per frame whose Source Image item carries the ReferencedFrameNumber, and the source frame
number as the temporal dimension index.

Segment descriptions need coded concepts; each pipeline passes its own label table of `SegmentSpec`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medml.errors import UnsupportedFormatError
from medml.io.codes import MEDML_MANUFACTURER, CodeTuple, code_item, coded, medml_version
from medml.io.dicom import read_dataset, stack_geometry
from medml.utils.files import atomic_path

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

# Common segmented property categories (SNOMED CT, from DICOM CID 7150).
CATEGORY_ANATOMY: CodeTuple = ("91723000", "SCT", "Anatomical Structure")
CATEGORY_TISSUE: CodeTuple = ("85756007", "SCT", "Tissue")
CATEGORY_MORPHOLOGY: CodeTuple = ("49755003", "SCT", "Morphologically Altered Structure")
CATEGORY_DEVICE: CodeTuple = ("260787004", "SCT", "Physical object")
CATEGORY_FINDING: CodeTuple = ("404684003", "SCT", "Clinical finding")


@dataclass(frozen=True)
class SegmentSpec:
    """One label of a pipeline's label table.

    Attributes:
        label: the value in the mask.
        name: SegmentLabel shown by viewers.
        category: SegmentedPropertyCategoryCodeSequence (code, scheme, meaning).
        property_type: SegmentedPropertyTypeCodeSequence (code, scheme, meaning).
        color: display colour as RGB 0..255.
    """

    label: int
    name: str
    category: CodeTuple
    property_type: CodeTuple
    color: tuple[int, int, int] | None = None


def _segments(masks: np.ndarray, table: Sequence[SegmentSpec] | Mapping[int, SegmentSpec]) -> list[SegmentSpec]:
    specs = list(table.values()) if isinstance(table, Mapping) else list(table)
    labels = {int(v) for v in np.unique(masks)} - {0}
    known = {s.label for s in specs}
    unknown = sorted(labels - known)
    if unknown:
        raise ValueError(f"mask labels {unknown} have no entry in the segment table")
    return sorted(specs, key=lambda s: s.label)


def _has_plane_geometry(source: Sequence[Dataset]) -> bool:
    first = source[0]
    if "FrameOfReferenceUID" not in first:
        return False
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        shared = first.get("SharedFunctionalGroupsSequence")
        per_frame = first.get("PerFrameFunctionalGroupsSequence")
        return (
            bool(per_frame)
            and "PlanePositionSequence" in per_frame[0]
            and ("PlaneOrientationSequence" in per_frame[0] or (shared and "PlaneOrientationSequence" in shared[0]))
        )
    return all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in source)


def write_dicom_seg(
    source: Sequence[Dataset] | Dataset,
    masks: np.ndarray,
    segment_table: Sequence[SegmentSpec] | Mapping[int, SegmentSpec],
    path: str | Path,
    *,
    series_description: str = "medml segmentation",
    algorithm_name: str = "medml",
    algorithm_version: str | None = None,
    series_number: int = 901,
    strict_pixel_measures: bool = False,
) -> Path:
    """Write a DICOM SEG of integer label masks that references the source instances (and frames).

    Args:
        source: the single-frame datasets of a series (``masks[i]`` labels ``source[i]``) or one multi-frame
            dataset (``masks[t]`` labels frame ``t + 1``). Use `source_datasets_in_volume_order` to get a series
            in the order of `read_volume`'s array.
        masks: (n, rows, cols) integer labels; 0 is background. A 2D mask is allowed for a one-frame source.
        segment_table: the pipeline's `SegmentSpec` per label; every non-zero label in ``masks`` needs one.
        path: output file.
        series_description: SeriesDescription of the SEG series.
        algorithm_name, algorithm_version: recorded in each segment's algorithm identification.
        series_number: SeriesNumber of the SEG series.
        strict_pixel_measures: for sources without plane geometry, write Pixel Measures only from the source's own
            ``PixelSpacing`` (and ``SliceThickness`` only when the source has one). A detector-plane
            ``ImagerPixelSpacing`` (XA/XRF cines) is then not relabelled as a patient-plane ``PixelSpacing`` and no
            slice thickness is invented; the SEG has no Frame of Reference, so the detector geometry stays with the
            referenced source frames. Off by default (the historical behaviour).
    """
    sources = [source] if isinstance(source, Dataset) else list(source)
    if not sources:
        raise ValueError("write_dicom_seg needs at least one source dataset")
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    frames = int(sources[0].get("NumberOfFrames", 1) or 1) if len(sources) == 1 else len(sources)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if masks.shape != (frames, rows, cols):
        raise ValueError(f"masks shape {masks.shape} does not match the source ({frames}, {rows}, {cols})")
    if np.any(masks < 0) or not np.issubdtype(masks.dtype, np.integer):
        raise ValueError("masks must hold non-negative integer labels")
    specs = _segments(masks, segment_table)
    version = algorithm_version or medml_version()
    build = _seg_with_highdicom if _has_plane_geometry(sources) else _seg_without_geometry
    if build is _seg_without_geometry:
        dataset = build(
            sources, masks, specs, series_description, algorithm_name, version, series_number, strict_pixel_measures
        )
    else:
        dataset = build(sources, masks, specs, series_description, algorithm_name, version, series_number)
    path = Path(path)
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path


def _seg_with_highdicom(
    sources: list[Dataset],
    masks: np.ndarray,
    specs: list[SegmentSpec],
    description: str,
    algorithm: str,
    version: str,
    series_number: int,
) -> Dataset:
    import highdicom as hd

    remapped = np.zeros(masks.shape, np.uint16)
    for number, spec in enumerate(specs, start=1):
        remapped[masks == spec.label] = number  # segment numbers must be 1..N, in the order of the descriptions
    descriptions = _segment_descriptions(specs, algorithm, version)
    pixel_array = remapped if len(sources) > 1 or int(sources[0].get("NumberOfFrames", 1) or 1) > 1 else remapped[0]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MEDML_MANUFACTURER,
        manufacturer_model_name=algorithm,
        software_versions=version,
        device_serial_number="0",
        omit_empty_frames=False,
        content_description=description[:64],
        content_label="MEDML",
        series_description=description,
    )
    return seg


def _segment_descriptions(specs: list[SegmentSpec], algorithm: str, version: str) -> list[Dataset]:
    """SegmentSequence items, numbered 1..N in ``specs`` order, made by highdicom for both SEG builders."""
    import highdicom as hd

    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=version, family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence")
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=coded(spec.category),
            segmented_property_type=coded(spec.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
            display_color=hd.color.CIELabColor.from_rgb(*spec.color[:3]) if spec.color else None,
        )
        for number, spec in enumerate(specs, start=1)
    ]


def _copy(src: Dataset, dst: Dataset, keys: Sequence[str]) -> None:
    for key in keys:
        if key in src:
            dst[key] = src[key]
        else:
            setattr(dst, key, "")


PATIENT_STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _seg_without_geometry(
    sources: list[Dataset],
    masks: np.ndarray,
    specs: list[SegmentSpec],
    description: str,
    algorithm: str,
    version: str,
    series_number: int,
    strict_pixel_measures: bool = False,
) -> Dataset:
    """Build a BINARY SEG for sources without plane geometry (cines, 2D photographs) with pydicom."""
    from pydicom.pixels import pack_bits

    first = sources[0]
    single_object = len(sources) == 1
    # Frame numbers are only meaningful (and only allowed) when the referenced object has several frames.
    multi = single_object and int(first.get("NumberOfFrames", 1) or 1) > 1
    n_source_frames = masks.shape[0]
    now = datetime.datetime.now()
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SEGMENTATION_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 192") or "ISO_IR 192"
    _copy(first, ds, PATIENT_STUDY_KEYS)
    ds.SOPClassUID = SEGMENTATION_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime
    ds.Manufacturer = MEDML_MANUFACTURER
    ds.ManufacturerModelName = algorithm
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = version
    ds.ImageType = ["DERIVED", "PRIMARY"]
    # Type 2C when there is no plane orientation: the source's row/column directions, or empty if unknown.
    ds.PatientOrientation = first.get("PatientOrientation", "") or ""
    ds.ContentLabel = "MEDML"
    ds.ContentDescription = description[:64]
    ds.ContentCreatorName = ""
    ds.SegmentationType = "BINARY"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(first.Rows), int(first.Columns)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.LossyImageCompression = "00"
    if "BodyPartExamined" in first:
        ds.BodyPartExamined = first.BodyPartExamined

    ds.SegmentSequence = DicomSequence(_segment_descriptions(specs, algorithm, version))

    dim_uid = generate_uid()
    dim_segment, dim_time = Dataset(), Dataset()
    dim_segment.DimensionOrganizationUID = dim_time.DimensionOrganizationUID = dim_uid
    dim_segment.DimensionIndexPointer = pydicom.tag.Tag("ReferencedSegmentNumber")
    dim_segment.FunctionalGroupPointer = pydicom.tag.Tag("SegmentIdentificationSequence")
    dim_segment.DimensionDescriptionLabel = "Segment Number"
    dim_time.DimensionIndexPointer = pydicom.tag.Tag("TemporalPositionIndex")
    dim_time.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    dim_time.DimensionDescriptionLabel = "Source Frame Number"
    organization = Dataset()
    organization.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = DicomSequence([organization])
    ds.DimensionIndexSequence = DicomSequence([dim_segment, dim_time])

    shared = Dataset()
    if strict_pixel_measures:
        spacing = first.get("PixelSpacing")
        if spacing:
            measures = Dataset()
            measures.PixelSpacing = [float(v) for v in spacing]
            if first.get("SliceThickness"):
                measures.SliceThickness = float(first.SliceThickness)
            shared.PixelMeasuresSequence = DicomSequence([measures])
        spacing = None
    else:
        spacing = first.get("PixelSpacing") or first.get("ImagerPixelSpacing")
    if spacing:
        measures = Dataset()
        measures.PixelSpacing = [float(v) for v in spacing]
        measures.SliceThickness = 1.0
        shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    per_frame, planes = [], []
    purpose = code_item(("121322", "DCM", "Source image for image processing operation"))
    derivation_code = code_item(("113076", "DCM", "Segmentation"))
    for number, spec in enumerate(specs, start=1):
        for t in range(n_source_frames):
            src = first if single_object else sources[t]
            ref = Dataset()
            ref.ReferencedSOPClassUID = src.SOPClassUID
            ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
            if multi:
                ref.ReferencedFrameNumber = t + 1
            ref.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
            derivation = Dataset()
            derivation.DerivationCodeSequence = DicomSequence([derivation_code])
            derivation.SourceImageSequence = DicomSequence([ref])
            content = Dataset()
            content.DimensionIndexValues = [number, t + 1]
            content.TemporalPositionIndex = t + 1
            identification = Dataset()
            identification.ReferencedSegmentNumber = number
            frame = Dataset()
            frame.DerivationImageSequence = DicomSequence([derivation])
            frame.FrameContentSequence = DicomSequence([content])
            frame.SegmentIdentificationSequence = DicomSequence([identification])
            per_frame.append(frame)
            planes.append(masks[t] == spec.label)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(per_frame)
    packed = pack_bits(np.stack(planes).astype(np.uint8))
    ds.PixelData = packed + (b"\x00" if len(packed) % 2 else b"")
    ds["PixelData"].VR = "OB"

    referenced = Dataset()
    referenced.SeriesInstanceUID = first.SeriesInstanceUID
    instances = []
    for src in sources:
        inst = Dataset()
        inst.ReferencedSOPClassUID = src.SOPClassUID
        inst.ReferencedSOPInstanceUID = src.SOPInstanceUID
        instances.append(inst)
    referenced.ReferencedInstanceSequence = DicomSequence(instances)
    ds.ReferencedSeriesSequence = DicomSequence([referenced])
    return ds


def source_datasets_in_volume_order(paths: Sequence[str | Path]) -> list[Dataset]:
    """Headers of a series' slice files sorted as `read_volume` sorts them (along the slice normal)."""
    datasets = [read_dataset(p, stop_before_pixels=True) for p in paths]
    if len(datasets) == 1:
        return datasets
    missing = [ds for ds in datasets if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds]
    if missing:
        raise UnsupportedFormatError("slices without position/orientation cannot be ordered", Path(paths[0]).parent)
    geometry = stack_geometry(
        np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets]),
        [float(v) for v in datasets[0].ImageOrientationPatient],
        [float(v) for v in datasets[0].get("PixelSpacing", [1, 1])],
        Path(paths[0]).parent,
    )
    return [datasets[i] for i in geometry.order]
