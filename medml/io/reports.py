"""CSV and JSON reports that identify cases by UIDs and case ids, never by patient name or ID.

Schemas (documented for users in ``docs/io.md``):

* predictions CSV: one row per case (or per case and label); first column ``case_id``, then any of
  ``kind, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID`` and the pipeline's result columns.
* failures CSV: ``case, reason``.
* ``inspect`` JSON: see `medml.io.commands.inspect`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medml.utils.files import write_json, write_text

# Tags and keys that identify a person; removed from report rows unless the user asks to keep them.
PATIENT_IDENTIFYING_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthName",
        "PatientMotherBirthName",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "AccessionNumber",
        "ReferringPhysicianName",
        "InstitutionName",
        "patient_name",
        "patient_id",
    }
)
UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def scrub_identifiers(row: Mapping[str, Any], keep_patient: bool = False) -> dict[str, Any]:
    """A copy of ``row`` without patient-identifying keys (kept only if ``keep_patient``)."""
    if keep_patient:
        return dict(row)
    return {k: v for k, v in row.items() if k not in PATIENT_IDENTIFYING_KEYS}


def _cell(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return ""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return value


def write_csv(
    rows: Iterable[Mapping[str, Any]],
    path: str | Path,
    columns: Sequence[str] | None = None,
    *,
    keep_patient: bool = False,
) -> Path:
    """Write rows as CSV (atomic). Columns: ``columns`` if given, else the union of keys in first-seen order.

    Patient-identifying keys are dropped unless ``keep_patient``; lists are joined with spaces; NaN is empty.
    """
    clean = [scrub_identifiers(r, keep_patient) for r in rows]
    if columns is None:
        seen: dict[str, None] = {}
        for row in clean:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in clean:
        writer.writerow({k: _cell(row.get(k, "")) for k in columns})
    path = Path(path)
    write_text(path, buffer.getvalue())
    return path


def write_report_json(report: Mapping[str, Any], path: str | Path, *, keep_patient: bool = False) -> Path:
    """Write a JSON report (atomic), dropping patient-identifying keys at any depth unless ``keep_patient``."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in scrub_identifiers(value, keep_patient).items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return None
        return value

    path = Path(path)
    write_json(path, clean(report))
    return path
