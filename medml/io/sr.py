"""DICOM Structured Report writer: a Comprehensive 3D SR with a TID 1500 Measurement Report holding image- or
study-level findings as qualitative evaluations (present/absent), with their probabilities as measurements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=coded(procedure), imaging_measurements=[group]
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources,
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
