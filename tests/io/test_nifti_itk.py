"""NIfTI (nibabel's real test files), MHA and NRRD read with their geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medml.errors import MedmlError, UnsupportedFormatError
from medml.io import Volume, read_volume, write_nifti

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def test_nibabel_example_matches_nibabel():
    path = NIBABEL_DATA / "anatomical.nii"
    reference = nib.load(path)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, np.asanyarray(reference.dataobj).transpose(2, 1, 0))
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-6)
    assert volume.array.dtype.isnative  # the file is big-endian; torch cannot take non-native arrays


def test_every_nibabel_nifti_loads_or_fails_cleanly():
    loaded = 0
    for path in sorted(NIBABEL_DATA.glob("*.nii*")):
        try:
            volume = read_volume(path)
        except MedmlError as exc:
            assert exc.path and "\n" not in exc.reason
            continue
        assert volume.array.ndim == 3
        loaded += 1
    assert loaded >= 3


def test_4d_nifti_is_refused():
    with pytest.raises(UnsupportedFormatError, match="4D"):
        read_volume(NIBABEL_DATA / "example4d.nii.gz")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_keep_geometry(tmp_path, suffix):
    array = np.random.default_rng(0).integers(-100, 100, (4, 5, 6)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    direction = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], float)
    image.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(image, str(tmp_path / f"img{suffix}"))
    volume = read_volume(tmp_path / f"img{suffix}")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.spacing, (0.5, 0.6, 2.0))
    np.testing.assert_allclose(volume.origin, (10.0, -20.0, 30.0))
    np.testing.assert_allclose(volume.direction, direction)
    # through NIfTI and back, the geometry survives
    again = read_volume(write_nifti(volume.array, volume, tmp_path / "img.nii.gz"))
    np.testing.assert_allclose(again.affine, volume.affine, atol=1e-5)


def test_affine_round_trip():
    affine = np.array([[-0.8, 0.1, 0.0, 90.0], [0.1, 0.8, 0.2, -100.0], [0.0, -0.2, 2.4, 40.0], [0, 0, 0, 1]])
    volume = Volume.from_affine(np.zeros((3, 4, 5)), affine)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-12)
