"""Clinical-format I/O: find cases in folders, read them with their geometry, write results clinics can open.

Readers return an array with its metadata (spacing, direction/affine, frame times, lead names and sampling rate,
study/series/instance UIDs); writers keep that geometry and reference the sources. See ``docs/io.md``.
"""

from medml.io.commands import convert, format_inspect, inspect
from medml.io.discover import discover
from medml.io.guard import memory_budget, set_memory_budget
from medml.io.image import default_palette, write_overlay_png, write_palette_png
from medml.io.nifti import write_nifti
from medml.io.readers import read_case, read_ecg, read_image, read_video, read_volume
from medml.io.reports import scrub_identifiers, write_csv, write_report_json
from medml.io.seg import SegmentSpec, source_datasets_in_volume_order, write_dicom_seg
from medml.io.sr import Finding, write_dicom_sr
from medml.io.types import CASE_KINDS, STANDARD_LEADS, Case, EcgRecord, Image2D, Video, Volume
from medml.io.video import write_overlay_video

__all__ = [
    "CASE_KINDS",
    "STANDARD_LEADS",
    "Case",
    "EcgRecord",
    "Finding",
    "Image2D",
    "SegmentSpec",
    "Video",
    "Volume",
    "convert",
    "default_palette",
    "discover",
    "format_inspect",
    "inspect",
    "memory_budget",
    "read_case",
    "read_ecg",
    "read_image",
    "read_video",
    "read_volume",
    "scrub_identifiers",
    "set_memory_budget",
    "source_datasets_in_volume_order",
    "write_csv",
    "write_dicom_seg",
    "write_dicom_sr",
    "write_nifti",
    "write_overlay_png",
    "write_overlay_video",
    "write_palette_png",
    "write_report_json",
]
