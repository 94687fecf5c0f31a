"""Coded concepts and the manufacturer identity shared by the DICOM objects medml writes (SEG, SR)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

CodeTuple = tuple[str, str, str]  # (code value, coding scheme designator, code meaning)

MEDML_MANUFACTURER = "medml"

# Interventional devices (SNOMED CT physical objects). 310362005 "Angioplasty catheter" is the device SNOMED CT's own
# angioplasty procedure template names as the "using device" (SNOMED International, confluence.ihtsdotools.org
# template "Percutaneous transluminal angioplasty ... using device"); an inflated angioplasty balloon is its balloon.
CATHETER: CodeTuple = ("19923001", "SCT", "Catheter")
ANGIOPLASTY_CATHETER: CodeTuple = ("310362005", "SCT", "Angioplasty catheter")


def medml_version() -> str:
    try:
        from importlib.metadata import version

        return version("medml")
    except Exception:  # not installed as a distribution (running from a checkout)
        return "0.0.0"


def coded(code: CodeTuple) -> Any:
    from pydicom.sr.coding import Code

    return Code(code[0], code[1], code[2])


def code_item(code: CodeTuple) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item
