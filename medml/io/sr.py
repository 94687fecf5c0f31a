"""DICOM Structured Report writers: a Comprehensive 3D SR with a TID 1500 Measurement Report holding image- or
study-level findings as qualitative evaluations (present/absent), with their probabilities as measurements
(`write_dicom_sr`), or findings located by boxes on a 2D image as planar ROI groups (TID 1410, SCOORD polylines
referencing the image; `write_dicom_sr_regions`, for detectors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medml.io.codes import MEDML_MANUFACTURER, CodeTuple, coded, medml_version
from medml.utils.files import atomic_path


@dataclass(frozen=True)
class Finding:
    """One image- or study-level result: a coded finding, whether it is present, and the model's probability."""

    concept: CodeTuple
    present: bool
    probability: float | None = None


def _concept(code: CodeTuple | tuple[str, str, str, str]):
    """A coded concept; a 4th element is the Coding Scheme Version, which schemes such as ``SCPECG`` require."""
    if len(code) == 4:
        return Code(code[0], code[1], code[2], scheme_version=code[3])
    return coded(code)


PRESENT: CodeTuple = ("52101004", "SCT", "Present")
ABSENT: CodeTuple = ("2667000", "SCT", "Absent")


def write_dicom_sr(
    source: Sequence[Dataset] | Dataset,
    findings: Sequence[Finding],
    path: str | Path,
    *,
    algorithm_name: str = "medml",
    algorithm_version: str | None = None,
    procedure: CodeTuple = ("363679005", "SCT", "Imaging procedure"),
    series_number: int = 902,
) -> Path:
    """Write a Comprehensive 3D SR (TID 1500 Measurement Report) with one qualitative evaluation per finding.

    Args:
        source: the datasets the findings were computed from (headers suffice); they become the SR's evidence
            and the measurement group's source images.
        findings: coded findings with present/absent and an optional probability (stored as a measurement with
            UCUM unit ``1``).
        path: output file.
        algorithm_name, algorithm_version: the AI algorithm recorded in the measurement group.
        procedure: the procedure reported (default SNOMED "Imaging procedure").
        series_number: SeriesNumber of the SR series.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [source] if isinstance(source, Dataset) else list(source)
    if not sources:
        raise ValueError("write_dicom_sr needs at least one source dataset")
    version = algorithm_version or medml_version()
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=algorithm_name, manufacturer_name=MEDML_MANUFACTURER, model_name=algorithm_name
        ),
    )
    context = hd.sr.ObservationContext(observer_person_context=None, observer_device_context=observer)
    qualitative, measurements = [], []
    for finding in findings:
        qualitative.append(
            hd.sr.QualitativeEvaluation(
                name=_concept(finding.concept), value=coded(PRESENT if finding.present else ABSENT)
            )
        )
        if finding.probability is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=_concept(finding.concept),
                    value=float(finding.probability),
                    unit=coded(("1", "UCUM", "no units")),
                    algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm_name, version=version),
                )
            )
    source_images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources if "Rows" in ds]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="medml findings"),
        algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm_name, version=version),
        qualitative_evaluations=qualitative or None,
        measurements=measurements or None,
        source_images=source_images or None,
    )
    return _save_report(sources, context, procedure, [group], series_number, algorithm_name, path)


@dataclass(frozen=True)
class RegionFinding:
    """One finding located by a box on the source image (a detection), for `write_dicom_sr_regions`."""

    finding: CodeTuple  # finding type, e.g. a diagnosis
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixel edges (DICOM image-relative coordinates)
    label: str  # tracking identifier shown by viewers, e.g. "36 Caries"
    site: CodeTuple | None = None  # finding site, e.g. a tooth
    measurements: tuple[tuple[CodeTuple, float], ...] = ()  # (concept, value) with UCUM unit "1", e.g. probabilities


def _algorithm(name: str, version: str | None) -> object:
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name=name, version=version or medml_version())


def write_dicom_sr_regions(
    source: Dataset,
    findings: Sequence[RegionFinding],
    path: str | Path,
    *,
    absent: Sequence[CodeTuple] = (),
    algorithm_name: str = "medml",
    algorithm_version: str | None = None,
    procedure: CodeTuple = ("363679005", "SCT", "Imaging procedure"),
    series_number: int = 903,
) -> Path:
    """Write a Comprehensive 3D SR (TID 1500) with one planar ROI measurement group (TID 1410) per finding: its box as
    a closed SCOORD polyline on ``source``, finding type, optional finding site, and measurements; concepts in
    ``absent`` are reported absent in an image-level group (so an SR without findings still says what was looked for).

    Args:
        source: the 2D image (its header suffices); referenced by every region and copied as evidence.
        findings: located findings; boxes are clipped to the image.
        path: output file.
        absent: concepts found absent on the image (image-level qualitative evaluations).
        algorithm_name, algorithm_version: the AI algorithm recorded in every group.
        procedure: the procedure reported.
        series_number: SeriesNumber of the SR series.
    """
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes

    if "Rows" not in source or "Columns" not in source:
        raise ValueError("write_dicom_sr_regions needs an image (Rows/Columns) as its source")
    rows, cols = int(source.Rows), int(source.Columns)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=algorithm_name, manufacturer_name=MEDML_MANUFACTURER, model_name=algorithm_name
        ),
    )
    context = hd.sr.ObservationContext(observer_person_context=None, observer_device_context=observer)
    unit = coded(("1", "UCUM", "no units"))
    groups: list[object] = []
    for finding in findings:
        x1, y1, x2, y2 = (float(v) for v in finding.box)
        x1, x2 = sorted((min(max(x1, 0.0), cols), min(max(x2, 0.0), cols)))
        y1, y2 = sorted((min(max(y1, 0.0), rows), min(max(y2, 0.0), rows)))
        corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=corners,
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        measurements = [
            hd.sr.Measurement(
                name=coded(concept),
                value=float(value),
                unit=unit,
                algorithm_id=_algorithm(algorithm_name, algorithm_version),
            )
            for concept, value in finding.measurements
        ]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=finding.label[:64]),
                referenced_region=region,
                finding_type=coded(finding.finding),
                finding_sites=[hd.sr.FindingSite(anatomic_location=coded(finding.site))] if finding.site else None,
                algorithm_id=_algorithm(algorithm_name, algorithm_version),
                measurements=measurements or None,
            )
        )
    if absent or not groups:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="image-level findings"),
                algorithm_id=_algorithm(algorithm_name, algorithm_version),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=coded(concept), value=coded(ABSENT)) for concept in absent
                ]
                or None,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )
        )
    return _save_report([source], context, procedure, groups, series_number, algorithm_name, path)


def _save_report(
    evidence: list, context: Any, procedure: Any, groups: list, series_number: int, algorithm_name: str, path: Any
) -> Path:
    """A TID 1500 measurement report of ``groups`` as a new Comprehensive 3D SR instance, written atomically."""
    import highdicom as hd

    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=coded(procedure), imaging_measurements=groups
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MEDML_MANUFACTURER,
        is_complete=True,
        series_description=f"{algorithm_name} findings",
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return path
