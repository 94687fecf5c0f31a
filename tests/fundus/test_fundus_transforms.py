"""Fundus transforms: colour normalisation across colour casts, ROI crop and paste-back, the shared preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from medml.data.synthetic_refuge import draw_fundus
from medml.transforms.fundus import (
    CropDiscROId,
    NormaliseFundusColourd,
    crop_roi,
    field_of_view,
    fundus_preprocessing,
    normalise_colour,
    paste_roi,
)


@pytest.fixture(scope="module")
def photo():
    return draw_fundus(np.random.default_rng(0), 160, 150, cdr=0.6)


def test_colour_normalisation_is_standardised_and_cast_invariant(photo):
    rgb, _, _ = photo
    out = normalise_colour(rgb)
    assert out.shape == (3, 150, 160) and out.dtype == np.float32
    fov = field_of_view(rgb)
    # statistics come from every 4th row/column of the field of view: close to, not exactly, 0 and 1 over all of it
    assert np.allclose(out[:, fov].mean(axis=1), 0, atol=0.05)
    assert np.allclose(out[:, fov].std(axis=1), 1, atol=0.05)
    assert (out[:, ~fov] == 0).all()
    cast = rgb.astype(np.float32) * np.array([0.8, 1.0, 1.15], np.float32)  # a camera's colour cast
    assert np.allclose(normalise_colour(cast), out, atol=1e-3)
    assert np.array_equal(NormaliseFundusColourd("image")({"image": rgb})["image"], out)


def test_roi_crop_and_paste_back(photo):
    _, labels, _ = photo
    ys, xs = np.nonzero(labels)
    box = (float(xs.mean()), float(ys.mean()), 2.5 * float(ys.max() - ys.min() + 1))
    roi = crop_roi(labels, box, 64, nearest=True)
    assert roi.shape == (64, 64) and set(np.unique(roi)) == {0, 1, 2}
    onehot = np.stack([roi == c for c in range(3)]).astype(np.float32)
    back = paste_roi(onehot, box, labels.shape).argmax(axis=0)
    agree = (back > 0) == (labels > 0)
    assert agree.mean() > 0.995  # resampling loses a pixel ring at most
    d = CropDiscROId(["image", "label"], 32)({"image": normalise_colour(photo[0]), "label": labels, "box": box})
    assert d["image_roi"].shape == (3, 32, 32) and d["label_roi"].shape == (32, 32)


def test_roi_outside_the_image_is_zero_padded(photo):
    rgb, _, _ = photo
    crop = crop_roi(normalise_colour(rgb), (0.0, 0.0, 40.0), 20)
    assert (crop[:, :9, :9] == 0).all()  # the quarter left of / above the image


def test_preprocessing_shapes(photo):
    out = fundus_preprocessing(48)({"image": photo[0]})
    assert out["image"].shape == (3, 150, 160) and out["small"].shape == (3, 48, 48)
    assert out["small"].dtype == np.float32
