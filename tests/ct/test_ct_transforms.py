"""CT transforms: one-pass resampling from the true geometry (orientation, oblique, centring), HU window, triplets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, ResizeWithPadOrCrop, Spacing

from medml.data.ctrate import LABELS
from medml.data.synthetic_ctrate import Chest, chest_hu, grid_points
from medml.io.types import Volume
from medml.transforms.ct import HUWindow, ResampleToGrid, SliceTriplets, ct_preprocess, slice_triplets


def _volume(shape=(20, 30, 40), spacing=(2.0, 2.0, 3.0), direction=None, fill=None) -> Volume:
    points, origin = grid_points(shape, spacing, direction)
    array = fill(points) if fill is not None else np.zeros(shape)
    return Volume(array.astype(np.float32), spacing, tuple(origin), np.eye(3) if direction is None else direction)


def test_slp_axes_point_superior_left_posterior():
    # A bright block in the superior, left, posterior octant must land at high indices of all three output axes.
    vol = _volume(fill=lambda p: np.where((p[..., 0] > 10) & (p[..., 1] > 10) & (p[..., 2] > 10), 100.0, -1000.0))
    out = ResampleToGrid(spacing=(3.0, 2.0, 2.0), size=(30, 40, 40), axcodes="SLP")(vol)
    idx = np.argwhere(out > 0)
    assert idx.size and (idx.min(0) >= np.array([15, 20, 20]) - 1).all()


def test_grid_matching_the_volume_is_identity_and_padding_is_air():
    vol = _volume(fill=lambda p: p[..., 0] + 2 * p[..., 1] + 3 * p[..., 2])
    # The volume is (z, y, x) = (S, P, L); SLP swaps the last two axes.
    out = ResampleToGrid(spacing=(3.0, 2.0, 2.0), size=(20, 40, 30), axcodes="SLP")(vol)
    np.testing.assert_allclose(out, vol.array.transpose(0, 2, 1), atol=1e-3)
    padded = ResampleToGrid(spacing=(3.0, 2.0, 2.0), size=(26, 40, 30))(vol)
    assert np.allclose(padded[:3], -1000.0) and np.allclose(padded[-3:], -1000.0)


def test_oblique_series_lands_on_the_same_grid_as_an_axial_one():
    chest = Chest(labels=np.zeros(len(LABELS), int))
    axial = _volume((40, 64, 64), (5.4, 5.4, 8.0), fill=lambda p: chest_hu(p, chest))
    t = np.deg2rad(15.0)
    direction = np.array([[1.0, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    oblique = _volume((44, 64, 64), (5.4, 5.4, 7.5), direction, fill=lambda p: chest_hu(p, chest))
    tf = ct_preprocess(spacing=(9.0, 7.2, 7.2), size=(30, 44, 44))
    a, b = tf({"image": axial})["image"], tf({"image": oblique})["image"]
    inner = (slice(4, -4), slice(4, -4), slice(4, -4))  # the oblique box misses the corners of the axial one
    assert np.abs(a[inner] - b[inner]).mean() < 0.03
    naive = Volume(oblique.array, oblique.spacing, oblique.origin, np.eye(3))  # geometry ignored
    c = tf({"image": naive})["image"]
    assert np.abs(a[inner] - c[inner]).mean() > 2 * np.abs(a[inner] - b[inner]).mean()


def test_matches_monai_orientation_spacing_crop_chain():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 300, (12, 16, 20)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(base)[None, None], size=(24, 32, 40), mode="trilinear")
    vol = _volume((24, 32, 40), (2.0, 2.0, 3.0), fill=lambda p: smooth[0, 0].numpy())
    ours = ResampleToGrid(spacing=(3.0, 2.0, 2.0), size=(24, 48, 48), axcodes="SLP")(vol)
    # MONAI: channel-first (x, y, z) array with the LPS->RAS affine, Orientation to SLP's RAS letters, crop/pad.
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    affine[:3, 3] = [-vol.origin[0], -vol.origin[1], vol.origin[2]]
    img = MetaTensor(torch.from_numpy(vol.array.transpose(2, 1, 0).copy())[None], affine=torch.tensor(affine))
    img = Spacing(pixdim=(2.0, 2.0, 3.0), mode="bilinear", padding_mode="border")(img)
    img = Orientation(axcodes="SLP")(img)  # nibabel letters: same meaning as ours for S, L, P
    img = ResizeWithPadOrCrop((24, 48, 48), value=-1000.0)(img)
    theirs = np.asarray(img[0])
    mask = theirs > -999  # inside the volume for both
    assert mask.mean() > 0.3
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-2)


def test_hu_window_and_triplets():
    x = np.array([-2000.0, -1000.0, -400.0, 200.0, 3000.0], dtype=np.float32)
    np.testing.assert_allclose(HUWindow()(x), np.array([0, 0, 0.5, 1, 1]) - 0.449, atol=1e-6)
    assert isinstance(HUWindow()(x), np.ndarray)
    vol = torch.arange(6 * 2 * 2, dtype=torch.float32).reshape(6, 2, 2)
    t = SliceTriplets()(vol)
    assert t.shape == (2, 3, 2, 2) and torch.equal(t[1, 0], vol[3])
    with pytest.raises(ValueError, match="multiple of 3"):
        slice_triplets(torch.zeros(7, 2, 2))
