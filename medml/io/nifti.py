"""NIfTI, MHA/MHD and NRRD volumes: read with their geometry, write NIfTI with the source affine.

NIfTI goes through nibabel (the reference for RAS affines); MetaImage and NRRD through SimpleITK (their
reference reader). Both come back as a `Volume` in SimpleITK's (z, y, x) array order and LPS geometry, so a
pipeline sees the same thing whatever the container.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medml.errors import AbsurdSizeError, CorruptFileError, GeometryError, UnsupportedFormatError
from medml.io.dicom import MAX_VOXELS
from medml.io.guard import check_compressed_size, check_memory, contained, reading
from medml.io.types import Volume
from medml.utils.files import atomic_path


def read_nifti(path: str | Path) -> Volume:
    """Read a 2D or 3D NIfTI-1/2 file (``.nii``, ``.nii.gz``, ``.hdr/.img``); scaling (scl_slope/inter) applied.

    The header is checked before any voxel is read: no voxels, a size above the memory budget, or a data file
    shorter than the header promises (a gzip stream included, by deflate's maximal ratio) is refused.
    """
    path = Path(path)
    with reading(path, "NIfTI"):
        return _read_nifti(path)


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ValueError)
        raise CorruptFileError(f"cannot read NIfTI ({type(exc).__name__}: {str(exc)[:200]})", path) from None
    if getattr(img, "affine", None) is None:
        raise UnsupportedFormatError(f"a {type(img).__name__} without a spatial affine (CIFTI?)", path)
    header = img.header
    shape = tuple(int(s) for s in img.shape)
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels == 0:
        raise CorruptFileError(f"NIfTI without voxels (shape {shape})", path)
    if voxels > MAX_VOXELS:
        raise AbsurdSizeError(f"implausible NIfTI size {shape}", path)
    stored = voxels * header.get_data_dtype().itemsize
    slope, inter = header.get_slope_inter()
    scaled = (slope not in (None, 1.0)) or (inter not in (None, 0.0))
    check_memory(voxels * 8 if scaled else stored, f"a NIfTI of {shape} {header.get_data_dtype()}", path)
    _check_data_length(img, stored, path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise CorruptFileError(f"cannot read NIfTI ({type(exc).__name__}: {str(exc)[:200]})", path) from None
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))  # torch and most consumers need native byte order
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise UnsupportedFormatError(f"a {data.ndim}D NIfTI {data.shape}; medml reads 2D and 3D images", path)
    meta: dict[str, Any] = {"source": str(path)}
    for key in ("qform_code", "sform_code"):
        try:
            meta[key] = int(header[key])
        except (KeyError, ValueError, TypeError):
            pass
    # nibabel indexes (i, j, k) = (x, y, z); medml arrays are (z, y, x) like SimpleITK's.
    volume = Volume.from_affine(np.ascontiguousarray(data.transpose(2, 1, 0)), img.affine, meta)
    check_volume_geometry(volume, path)
    return volume


def _check_data_length(img: Any, stored: int, path: Path) -> None:
    """Refuse a NIfTI whose (possibly gzipped) data file is shorter than its header promises, before reading it."""
    try:
        data_file = Path(img.file_map["image"].filename)
        offset = int(img.header.get_data_offset())
        size = data_file.stat().st_size
    except (KeyError, TypeError, ValueError, OSError):
        return  # nibabel reports what it cannot open
    needed = offset + stored
    if data_file.name.lower().endswith(".gz"):
        check_compressed_size(size, needed, path)
    elif size < needed:
        raise CorruptFileError(f"truncated: {size} bytes where the header promises {needed}", path)


def check_volume_geometry(volume: Volume, path: str | Path) -> None:
    """`GeometryError` for zero, negative or non-finite spacing, a non-finite origin, or a direction that is not
    finite and orthonormal."""
    spacing = np.asarray(volume.spacing, float)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise GeometryError(f"voxel spacing {tuple(float(s) for s in spacing)} is not positive and finite", path)
    if not (np.all(np.isfinite(volume.origin)) and np.all(np.isfinite(volume.direction))):
        raise GeometryError("origin or orientation is not finite (NaN in the affine?)", path)
    direction = np.asarray(volume.direction, float)
    # As SimpleITK: direction cosines must be orthonormal (a lying header can scale or shear them arbitrarily).
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise GeometryError("orientation is not orthonormal (scaled or sheared direction cosines)", path)


def read_itk_image(path: str | Path) -> Volume:
    """Read MHA/MHD/NRRD (or anything SimpleITK reads) into a `Volume`.

    Data files named by the header (MetaImage ``ElementDataFile``, NRRD ``data file``) must lie in the header's
    folder; the size is checked against the memory budget before the pixels are read.
    """
    path = Path(path)
    with reading(path, "image"):
        return _read_itk_image(path)


def _read_itk_image(path: Path) -> Volume:
    import SimpleITK as sitk

    for name in referenced_data_files(path):
        contained(name, path, "data file")
    check_itk_header(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = reader.GetSize()
        components = max(1, reader.GetNumberOfComponents())
        voxels = int(np.prod(size, dtype=np.int64))
        if voxels == 0:
            raise CorruptFileError(f"image without voxels (size {size})", path)
        if voxels * components > MAX_VOXELS:
            raise AbsurdSizeError(f"implausible image size {size}", path)
        probe = sitk.Image([1] * len(size), reader.GetPixelID(), components)
        itemsize = sitk.GetArrayViewFromImage(probe).itemsize
        check_memory(voxels * components * itemsize, f"an image of {size}", path)
        image = reader.Execute()
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
    volume = Volume(array, tuple(map(float, spacing)), tuple(map(float, origin)), direction, meta)
    check_volume_geometry(volume, path)
    return volume


# Header keys naming the data file: MetaImage (``ElementDataFile = name``), NRRD detached headers (``data file: name``).
_DATA_FILE_KEYS = {"elementdatafile": "=", "data file": ":", "datafile": ":"}


def _header_fields(path: Path) -> tuple[str, dict[str, str]]:
    """("metaimage" | "nrrd" | "", {lower-case key: value}) from the text header of an MHA/MHD/NRRD file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return "", {}
    if head.startswith(b"NRRD"):
        kind, sep, text = "nrrd", ":", head.split(b"\n\n", 1)[0]
    elif b"NDims" in head or b"ObjectType" in head:
        kind, sep, text = "metaimage", "=", head.split(b"ElementDataFile", 1)[0]
    else:
        return "", {}
    fields = {}
    for line in text.decode("latin-1", "replace").splitlines():
        key, found, value = line.partition(sep)
        if found and not key.startswith("#"):
            fields[key.strip().lower()] = value.strip()
    return kind, fields


def check_itk_header(path: str | Path) -> None:
    """Dimension and sizes of a MetaImage or NRRD header are sane before SimpleITK sees them: SimpleITK crashes
    or hangs on some lies (``NDims = -1``) instead of raising."""
    path = Path(path)
    kind, fields = _header_fields(path)
    if not kind:
        return
    dim_key, size_key = ("ndims", "dimsize") if kind == "metaimage" else ("dimension", "sizes")
    try:
        dim = int(fields.get(dim_key, ""))
        sizes = [int(v) for v in fields.get(size_key, "").split()]
    except ValueError:
        raise CorruptFileError(f"header fields {dim_key}/{size_key} are not integers", path) from None
    if not 1 <= dim <= 16:
        raise CorruptFileError(f"header declares {dim} dimensions", path)
    if len(sizes) != dim or min(sizes) < 1:
        raise CorruptFileError(f"header sizes {sizes} do not fit {dim} dimensions", path)


def referenced_data_files(path: str | Path) -> list[str]:
    """The data file names a MetaImage or NRRD header gives (LIST entries and %d patterns included, as written)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return []
    if not (head.startswith(b"NRRD") or b"ElementDataFile" in head or b"ObjectType" in head):
        return []
    text = head.split(b"\n\n", 1)[0] if head.startswith(b"NRRD") else head
    lines = text.decode("latin-1", "replace").splitlines()
    names: list[str] = []
    for index, line in enumerate(lines):
        for key, sep in _DATA_FILE_KEYS.items():
            name, found, value = line.partition(sep)
            if not found or name.strip().lower() != key:
                continue
            value = value.strip()
            if value.upper() == "LOCAL":
                return names
            if value.upper().startswith("LIST"):
                return names + [ln.strip() for ln in lines[index + 1 :] if ln.strip()]
            fields = value.split()
            # "pattern %03d.raw 1 10 1": the folder part of the pattern is what must stay inside
            names.append(fields[0] if "%" in value and len(fields) >= 2 else value)
            return names
    return names


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
