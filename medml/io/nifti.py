"""NIfTI, MHA/MHD and NRRD volumes: read with their geometry, write NIfTI with the source affine.

NIfTI goes through nibabel (the reference for RAS affines); MetaImage and NRRD through SimpleITK (their
reference reader). Both come back as a `Volume` in SimpleITK's (z, y, x) array order and LPS geometry, so a
pipeline sees the same thing whatever the container.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medml.errors import AbsurdSizeError, CorruptFileError, UnsupportedFormatError
from medml.io.dicom import MAX_VOXELS
from medml.io.types import Volume
from medml.utils.files import atomic_path


def read_nifti(path: str | Path) -> Volume:
    """Read a 2D or 3D NIfTI-1/2 file (``.nii``, ``.nii.gz``, ``.hdr/.img``); scaling (scl_slope/inter) applied."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        if getattr(img, "affine", None) is None:
            raise UnsupportedFormatError(f"a {type(img).__name__} without a spatial affine (CIFTI?)", path)
        shape = tuple(int(s) for s in img.shape)
        if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
            raise AbsurdSizeError(f"implausible NIfTI size {shape}", path)
        data = np.asanyarray(img.dataobj)
    except (AbsurdSizeError, UnsupportedFormatError):
        raise
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ValueError)
        raise CorruptFileError(f"cannot read NIfTI ({type(exc).__name__}: {str(exc)[:200]})", path) from None
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))  # torch and most consumers need native byte order
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise UnsupportedFormatError(f"a {data.ndim}D NIfTI {data.shape}; medml reads 2D and 3D images", path)
    header = img.header
    meta: dict[str, Any] = {"source": str(path)}
    for key in ("qform_code", "sform_code"):
        try:
            meta[key] = int(header[key])
        except (KeyError, ValueError, TypeError):
            pass
    # nibabel indexes (i, j, k) = (x, y, z); medml arrays are (z, y, x) like SimpleITK's.
    return Volume.from_affine(np.ascontiguousarray(data.transpose(2, 1, 0)), img.affine, meta)


def read_itk_image(path: str | Path) -> Volume:
    """Read MHA/MHD/NRRD (or anything SimpleITK reads) into a `Volume`."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = reader.GetSize()
        if int(np.prod(size, dtype=np.int64)) * max(1, reader.GetNumberOfComponents()) > MAX_VOXELS:
            raise AbsurdSizeError(f"implausible image size {size}", path)
        image = reader.Execute()
    except AbsurdSizeError:
        raise
    except RuntimeError as exc:
        first = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise CorruptFileError(f"cannot read image ({first[-1][:200] if first else 'SimpleITK error'})", path) from None
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise UnsupportedFormatError(f"a {dim}D image; medml reads 2D and 3D images", path)
    array = sitk.GetArrayFromImage(image)
    spacing, origin = list(image.GetSpacing()), list(image.GetOrigin())
    direction = np.array(image.GetDirection(), float).reshape(dim, dim)
    if dim == 2:
        array = array[None]
        spacing, origin = spacing + [1.0], origin + [0.0]
        direction3 = np.eye(3)
        direction3[:2, :2] = direction
        direction = direction3
    meta = {"source": str(path)}
    for key in reader.GetMetaDataKeys():
        if key.startswith(("ITK_", "NRRD_", "Modality")):
            meta[key] = reader.GetMetaData(key)
    return Volume(array, tuple(map(float, spacing)), tuple(map(float, origin)), direction, meta)


def write_nifti(
    array: np.ndarray, affine_or_volume: np.ndarray | Volume, path: str | Path, *, frame_time_s: float | None = None
) -> Path:
    """Write a (z, y, x) array as NIfTI with the given RAS affine (or the geometry of a `Volume`).

    Both the sform and the qform carry the affine (code "scanner" when it came from a DICOM volume, "aligned"
    otherwise) so nibabel, SimpleITK, ITK-SNAP and 3D Slicer all place the voxels in the same patient position.
    Boolean masks are stored as uint8.

    Args:
        array: (z, y, x) voxels (a (T, H, W) stack of frames is written the same way); extra trailing axes
            (channels) are kept after x.
        affine_or_volume: 4x4 RAS affine, or the `Volume` whose geometry the array shares.
        path: ``.nii`` or ``.nii.gz`` file.
        frame_time_s: write a (T, y, x) stack of 2D frames as 2D+t instead: a (x, y, 1, T) image whose pixdim[4]
            is this frame interval in seconds (xyzt units mm / sec), so viewers show time, not a z axis.
    """
    import nibabel as nib

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim < 3:
        raise ValueError(f"write_nifti needs a (z, y, x) array, got shape {array.shape}")
    code = "aligned"
    if isinstance(affine_or_volume, Volume):
        volume = affine_or_volume
        if volume.array.shape[:3] != array.shape[:3]:
            raise ValueError(f"array shape {array.shape} does not match the volume's {volume.array.shape}")
        affine = volume.affine
        if "SeriesInstanceUID" in volume.meta:
            code = "scanner"
    else:
        affine = np.asarray(affine_or_volume, float)
        if affine.shape != (4, 4):
            raise ValueError("affine must be 4x4")
    if frame_time_s is not None:
        if array.ndim != 3:
            raise ValueError(f"a 2D+t NIfTI needs a (T, y, x) array, got shape {array.shape}")
        if not frame_time_s > 0:
            raise ValueError(f"frame_time_s must be positive, got {frame_time_s}")
        data = array.transpose(2, 1, 0)[:, :, None, :]  # (x, y, 1, T)
    else:
        data = array.transpose((2, 1, 0, *range(3, array.ndim)))
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.set_sform(affine, code=code)
    image.set_qform(affine, code=code)
    image.header.set_xyzt_units("mm", "sec")
    if frame_time_s is not None:
        image.header.set_zooms((*image.header.get_zooms()[:3], float(frame_time_s)))
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path
