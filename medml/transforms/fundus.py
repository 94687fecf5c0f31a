"""Fundus photograph transforms in MONAI's style (array transforms that do the work, dictionary wrappers that
delegate) and `fundus_preprocessing`, the one composition that training, evaluation and prediction share.

* `NormaliseFundusColour`: RGB -> channel-first float32 standardised per channel inside the field of view (the
  bright disc of the fundus camera), so photographs from different cameras and colour casts land on one scale;
  outside the field of view is 0.
* `CropDiscROI`: a square box around the optic disc (centre, side in original pixels) resampled to a fixed size,
  zero-padded where the box leaves the image; `paste_roi` maps ROI-sized maps back to the original resolution.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import cv2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import CastToTyped, Compose, CopyItemsd, MapTransform, Resized, ToNumpyd, Transform
from monai.utils import TransformBackends, convert_to_numpy

__all__ = [
    "CropDiscROI",
    "CropDiscROId",
    "NormaliseFundusColour",
    "NormaliseFundusColourd",
    "crop_roi",
    "field_of_view",
    "fundus_preprocessing",
    "normalise_colour",
    "paste_roi",
    "roi_matrix",
]

Box = tuple[float, float, float]  # centre x, centre y, side (original pixels)


def field_of_view(rgb: np.ndarray, threshold: float = 0.06) -> np.ndarray:
    """Boolean HxW mask of the camera's field of view: pixels brighter than ``threshold`` of the maximum in red
    (the brightest channel of fundus photographs)."""
    red = rgb[..., 0].astype(np.float32)
    return red > threshold * max(float(red.max()), 1e-6)


def normalise_colour(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    """HxWx3 (uint8 or float) RGB -> (3, H, W) float32, each channel standardised to mean 0 / std 1 over the field
    of view (statistics from every 4th row and column, which changes them by far less than JPEG noise and makes
    a 2000-px photograph four times faster); pixels outside it are 0."""
    arr = convert_to_numpy(rgb)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    arr = arr[..., :3]
    fov = field_of_view(arr)
    sub, sub_fov = arr[::4, ::4], fov[::4, ::4]
    sample = sub[sub_fov] if sub_fov.sum() >= 16 else sub.reshape(-1, 3)
    sample = sample.astype(np.float64)
    mean, std = sample.mean(axis=0), np.maximum(sample.std(axis=0), 1e-3)
    out = np.empty((3, *arr.shape[:2]), np.float32)
    outside = ~fov if sub_fov.sum() >= 16 else np.zeros(fov.shape, bool)
    for c in range(3):
        plane = out[c]
        np.subtract(arr[..., c], np.float32(mean[c]), out=plane, casting="unsafe")
        plane *= np.float32(1.0 / std[c])
        plane[outside] = 0.0
    return out


class NormaliseFundusColour(Transform):
    """`normalise_colour` as a transform."""

    backend = [TransformBackends.NUMPY]

    def __call__(self, rgb: np.ndarray | torch.Tensor) -> np.ndarray:
        return normalise_colour(rgb)


class NormaliseFundusColourd(MapTransform):
    """Dictionary wrapper of `NormaliseFundusColour`."""

    backend = NormaliseFundusColour.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = NormaliseFundusColour()

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict[Hashable, np.ndarray]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def roi_matrix(box: Box, size: int) -> np.ndarray:
    """2x3 affine matrix taking original (x, y) pixel coordinates to ROI coordinates (pixel centres aligned)."""
    cx, cy, side = box
    s = size / side
    return np.array([[s, 0.0, (size - 1) / 2 - s * cx], [0.0, s, (size - 1) / 2 - s * cy]], np.float64)


def _warp(planes: np.ndarray, matrix: np.ndarray, size: tuple[int, int], nearest: bool, inverse: bool) -> np.ndarray:
    """(C, H, W) -> (C, size[1], size[0]) through cv2.warpAffine, zeros outside."""
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if inverse:
        flags |= cv2.WARP_INVERSE_MAP
    return np.stack(
        [cv2.warpAffine(p, matrix, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0) for p in planes]
    )


def crop_roi(array: np.ndarray, box: Box, size: int, nearest: bool = False) -> np.ndarray:
    """The square ``box`` of a channel-first (C, H, W) array (or an HxW map) resampled to ``size`` x ``size``."""
    arr = convert_to_numpy(array)
    squeeze = arr.ndim == 2
    planes = arr[None] if squeeze else arr
    dtype = planes.dtype
    work = planes.astype(np.float32) if not nearest else planes.astype(np.uint8 if dtype != np.float32 else dtype)
    out = _warp(work, roi_matrix(box, size), (size, size), nearest, inverse=False).astype(dtype)
    return out[0] if squeeze else out


def paste_roi(maps: np.ndarray, box: Box, shape: Sequence[int], nearest: bool = False) -> np.ndarray:
    """ROI-sized (C, size, size) maps -> (C, H, W) at the original resolution (zero outside the box)."""
    maps = np.asarray(maps, np.float32)
    size = maps.shape[-1]
    height, width = int(shape[0]), int(shape[1])
    return _warp(maps, roi_matrix(box, size), (width, height), nearest, inverse=True)


class CropDiscROI(Transform):
    """`crop_roi` with a fixed output size; the box comes with each call."""

    backend = [TransformBackends.NUMPY]

    def __init__(self, size: int, nearest: bool = False) -> None:
        self.size, self.nearest = size, nearest

    def __call__(self, array: np.ndarray, box: Box) -> np.ndarray:
        return crop_roi(array, box, self.size, self.nearest)


class CropDiscROId(MapTransform):
    """Crops ``keys`` around ``data[box_key]`` (centre x, centre y, side) into ``<key>_roi``; label keys (those in
    ``label_keys``) are resampled nearest."""

    backend = CropDiscROI.backend

    def __init__(
        self, keys: KeysCollection, size: int, box_key: str = "box", label_keys: Sequence[str] = ("label",)
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.box_key, self.label_keys = box_key, set(label_keys)
        self.image_crop, self.label_crop = CropDiscROI(size), CropDiscROI(size, nearest=True)

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict[Hashable, np.ndarray]:
        d = dict(data)
        box = tuple(float(v) for v in d[self.box_key])
        for key in self.key_iterator(d):
            crop = self.label_crop if key in self.label_keys else self.image_crop
            d[f"{key}_roi"] = crop(d[key], box)
        return d


def fundus_preprocessing(locate_size: int) -> Compose:
    """``{"image": HxWx3 RGB}`` -> ``image`` (3, H, W) colour-normalised float32 at the original size (ROI crops
    are taken from it) and ``small`` (3, S, S), the downscaled view the disc/fovea locator sees (area averaging,
    which is anti-aliased and cheap). Training, evaluation and prediction all call this."""
    return Compose(
        [
            NormaliseFundusColourd("image"),
            CopyItemsd("image", names="small"),
            Resized("small", (locate_size, locate_size), mode="area"),
            ToNumpyd(["image", "small"]),
            CastToTyped(["image", "small"], dtype=np.float32),
        ]
    )
