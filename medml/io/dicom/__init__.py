"""DICOM readers: single-frame series to volumes, multi-frame objects, 2D images and cines.

One module per concern, in dependency order:

* `header`: open a file (with or without preamble) and read the facts every reader needs.
* `pixels`: decode pixel data (native fast path or pydicom's plugins) and apply the modality rescale.
* `geometry`: sort slices along the normal; spacing, origin and direction as SimpleITK derives them.
* `native`: the header walk that reads plain uncompressed slices without pydicom (the hot path of CT series).
* `series`: a series of single-frame files into one `Volume`.
* `multiframe`: enhanced CT/MR/PET and RT Dose grids into a `Volume`.
* `planar`: 2D images and cines, with display LUTs and frame timing.
"""

from medml.io.dicom.geometry import StackGeometry, permute_slices_in_place, stack_geometry
from medml.io.dicom.header import (
    DECODER_PACKAGES,
    MAX_FRAMES,
    MAX_ROWS_COLUMNS,
    MAX_VOXELS,
    NATIVE_LITTLE_ENDIAN,
    check_decoded_size,
    check_dimensions,
    common_meta,
    float_values,
    has_pixel_data,
    header_float,
    header_int,
    looks_like_raw_dataset,
    number_of_frames,
    read_dataset,
    sop_class_name,
    transfer_syntax,
)
from medml.io.dicom.multiframe import is_enhanced_volume, read_multiframe_volume
from medml.io.dicom.pixels import (
    apply_rescale,
    decode_into,
    decode_pixels,
    output_dtype,
    pixel_format,
    rescale_params,
    rescaled_dtype,
)
from medml.io.dicom.planar import frame_times_ms, read_dicom_image, read_dicom_video, to_display
from medml.io.dicom.series import NotOneSeries, default_workers, read_dicom_series

__all__ = [
    "DECODER_PACKAGES",
    "MAX_FRAMES",
    "MAX_ROWS_COLUMNS",
    "MAX_VOXELS",
    "NATIVE_LITTLE_ENDIAN",
    "NotOneSeries",
    "StackGeometry",
    "apply_rescale",
    "check_decoded_size",
    "check_dimensions",
    "common_meta",
    "decode_into",
    "decode_pixels",
    "default_workers",
    "float_values",
    "frame_times_ms",
    "has_pixel_data",
    "header_float",
    "header_int",
    "is_enhanced_volume",
    "looks_like_raw_dataset",
    "number_of_frames",
    "output_dtype",
    "permute_slices_in_place",
    "pixel_format",
    "read_dataset",
    "read_dicom_image",
    "read_dicom_series",
    "read_dicom_video",
    "read_multiframe_volume",
    "rescale_params",
    "rescaled_dtype",
    "sop_class_name",
    "stack_geometry",
    "to_display",
    "transfer_syntax",
]
