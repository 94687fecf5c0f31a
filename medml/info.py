"""``medml info``: versions, devices and which optional codecs are present."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator

from medml.engine.record import package_versions

# pydicom pixel-data plugins and what they decode
CODECS = {
    "pylibjpeg": "pydicom plugin framework for the three below",
    "libjpeg": "JPEG baseline/extended/lossless, JPEG-LS (pylibjpeg-libjpeg)",
    "openjpeg": "JPEG 2000 (pylibjpeg-openjpeg)",
    "rle": "RLE Lossless, fast (pylibjpeg-rle)",
    "gdcm": "all DICOM compressions (python-gdcm)",
    "imageio_ffmpeg": "MP4/AVI video read and write",
    "cv2": "video and image I/O (OpenCV)",
}
TOOLS = {
    "dciodvfy": "DICOM validator (dicom3tools)",
    "dcm2niix": "reference DICOM to NIfTI",
    "dcmdump": "DICOM dump (dcmtk)",
}


def info_lines() -> Iterator[str]:
    """The report line by line; devices come last because they need torch, which takes seconds to import."""
    yield "versions:"
    yield from (f"  {k:12s} {v or 'not installed'}" for k, v in package_versions().items())
    yield "optional codecs:"
    for module, what in CODECS.items():
        present = importlib.util.find_spec(module) is not None
        yield f"  {module:14s} {'yes' if present else 'no '}  {what}"
    yield "tools:"
    for tool, what in TOOLS.items():
        yield f"  {tool:14s} {'yes' if shutil.which(tool) else 'no '}  {what}"
    yield "devices:"
    import torch

    yield f"  cpu threads  {torch.get_num_threads()}"
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            yield (
                f"  cuda:{i}       {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
            )
        yield f"  CUDA         {torch.version.cuda}"
    else:
        yield "  cuda         not available"
