"""Chest-CT transforms in MONAI's style (an array transform that does the work, a dictionary wrapper that delegates).

CT-SSG's input (spec part 2, §2.2): Hounsfield units resampled to 1.5 x 0.75 x 0.75 mm in SLP orientation (axis 0
inferior->superior, axis 1 right->left, axis 2 anterior->posterior), centre-cropped or padded with air to
240 x 480 x 480, clipped to [-1000, 200] HU, scaled to [0, 1] and shifted by -0.449; then consecutive slice triplets
(3i, 3i+1, 3i+2) become the 3-channel images of the 2D trunk.

`ResampleToGrid` does reorientation, resampling and the centre crop/pad in one trilinear pass from the volume's
true geometry (direction cosines included, so oblique DICOM series land on the same grid as axial NIfTI), written
by hand because MONAI's ``Orientation`` -> ``Spacing`` -> ``ResizeWithPadOrCrop`` chain interpolates a full-size
intermediate volume and then throws most of it away; one pass over the output grid gives the same voxels within
interpolation tolerance (``benchmarks/ct.py`` checks both). `ct_preprocess` builds the one ``Compose`` that the
dataset cache, training and clinical prediction all use.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, ScaleIntensityRange, Transform
from monai.utils import convert_to_dst_type

from medml.io.types import Volume

__all__ = [
    "HUWindow",
    "HUWindowd",
    "ResampleToGrid",
    "ResampleToGridd",
    "SliceTriplets",
    "SliceTripletsd",
    "axcodes_directions",
    "ct_preprocess",
    "slice_triplets",
]

# LPS unit vectors of the letters a direction code may use (DICOM patient coordinates).
_LETTERS = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


def axcodes_directions(axcodes: str) -> np.ndarray:
    """3x3 matrix whose row ``a`` is the LPS direction in which array axis ``a`` increases (``"SLP"`` -> S, L, P)."""
    codes = axcodes.upper()
    if len(codes) != 3 or any(c not in _LETTERS for c in codes):
        raise ValueError(f"axcodes '{axcodes}' must be three of L/R, A/P, S/I")
    rows = np.array([_LETTERS[c] for c in codes])
    if abs(abs(np.linalg.det(rows)) - 1.0) > 1e-6:
        raise ValueError(f"axcodes '{axcodes}' name an axis twice")
    return rows


def output_grid(
    volume: Volume, spacing: Sequence[float], size: Sequence[int], axcodes: str = "SLP"
) -> tuple[np.ndarray, np.ndarray]:
    """(origin, axes) of the output grid centred on the volume's centre: point = origin + axes.T @ index (mm, LPS).

    ``axes`` rows are the LPS step vectors (direction x spacing) of the output array axes.
    """
    dirs = axcodes_directions(axcodes)
    axes = dirs * np.asarray(spacing, float)[:, None]
    nz, ny, nx = volume.array.shape
    to_lps = np.asarray(volume.direction, float) @ np.diag(volume.spacing)  # columns: x, y, z index steps
    centre = np.asarray(volume.origin, float) + to_lps @ (np.array([nx, ny, nz], float) - 1.0) / 2.0
    half = (np.asarray(size, float) - 1.0) / 2.0
    return centre - axes.T @ half, axes


def resample_to_grid(
    volume: Volume,
    spacing: Sequence[float] = (1.5, 0.75, 0.75),
    size: Sequence[int] = (240, 480, 480),
    axcodes: str = "SLP",
    pad_value: float = -1000.0,
    slab: int = 16,
) -> np.ndarray:
    """Trilinear resampling of ``volume`` onto the centred output grid; outside the volume is ``pad_value``.

    Works in output slabs of ``slab`` slices so that the sampling grid never needs more than ~50 MB.
    """
    origin, axes = output_grid(volume, spacing, size, axcodes)
    nz, ny, nx = volume.array.shape
    to_lps = np.asarray(volume.direction, float) @ np.diag(volume.spacing)
    to_index = np.linalg.inv(to_lps)  # LPS offset -> (x, y, z) continuous voxel index
    # grid_sample's align_corners=True normalisation: index 0 -> -1, index n-1 -> +1 (x, y, z order).
    norm = np.array([2.0 / max(nx - 1, 1), 2.0 / max(ny - 1, 1), 2.0 / max(nz - 1, 1)])
    step = (norm[:, None] * (to_index @ axes.T)).T  # row a: change of normalised (x, y, z) per output step on axis a
    start = norm * (to_index @ (origin - np.asarray(volume.origin, float))) - 1.0
    # Shift so that air is 0: grid_sample pads with zeros, and the border blends into air, not into 0 HU.
    src = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32)) - float(pad_value)
    src = src[None, None]
    d, h, w = (int(s) for s in size)
    step_t = torch.tensor(step, dtype=torch.float64)
    plane = (
        torch.arange(h, dtype=torch.float64)[:, None, None] * step_t[1]
        + torch.arange(w, dtype=torch.float64)[None, :, None] * step_t[2]
        + torch.tensor(start, dtype=torch.float64)
    )  # (h, w, 3)
    out = torch.empty((d, h, w), dtype=torch.float32)
    for z0 in range(0, d, slab):
        z = torch.arange(z0, min(d, z0 + slab), dtype=torch.float64)
        grid = (plane[None] + z[:, None, None, None] * step_t[0]).to(torch.float32)
        sampled = F.grid_sample(src, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
        out[z0 : z0 + len(z)] = sampled[0, 0]
    return (out + float(pad_value)).numpy()


class ResampleToGrid(Transform):
    """Reorient, resample and centre-crop/pad a `medml.io.Volume` (HU) onto a fixed grid in one pass.

    Args:
        spacing: output spacing in mm along the output axes (CT-SSG: 1.5, 0.75, 0.75).
        size: output array shape (CT-SSG: 240, 480, 480).
        axcodes: direction in which each output axis increases (CT-SSG: ``"SLP"``).
        pad_value: value outside the scanned volume (air, -1000 HU).
    """

    def __init__(
        self,
        spacing: Sequence[float] = (1.5, 0.75, 0.75),
        size: Sequence[int] = (240, 480, 480),
        axcodes: str = "SLP",
        pad_value: float = -1000.0,
    ) -> None:
        axcodes_directions(axcodes)  # fail at construction, not on the first volume
        self.spacing, self.size, self.axcodes, self.pad_value = tuple(spacing), tuple(size), axcodes, pad_value

    def __call__(self, volume: Volume) -> np.ndarray:
        return resample_to_grid(volume, self.spacing, self.size, self.axcodes, self.pad_value)


class HUWindow(Transform):
    """Clip to ``[hu_min, hu_max]``, scale to [0, 1] (MONAI ``ScaleIntensityRange``), then subtract ``offset``.

    CT-SSG: [-1000, 200] HU and offset 0.449 (the mean of ImageNet's RGB means; no division by a std).
    """

    def __init__(self, hu_min: float = -1000.0, hu_max: float = 200.0, offset: float = 0.449) -> None:
        if hu_max <= hu_min:
            raise ValueError(f"hu_max {hu_max} must exceed hu_min {hu_min}")
        self.scale = ScaleIntensityRange(a_min=hu_min, a_max=hu_max, b_min=0.0, b_max=1.0, clip=True)
        self.offset = float(offset)

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        # MONAI returns a MetaTensor; hand back the input's own type so caches and numpy callers stay plain.
        out = convert_to_dst_type(self.scale(image), image, dtype=_float_dtype(image))[0]
        return out - self.offset


def _float_dtype(image: np.ndarray | torch.Tensor) -> Any:
    return torch.float32 if isinstance(image, torch.Tensor) else np.float32


def slice_triplets(image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """(..., D, H, W) -> (..., D/3, 3, H, W): slices (3i, 3i+1, 3i+2) become the channels of node i."""
    *lead, d, h, w = image.shape
    if d % 3:
        raise ValueError(f"depth {d} is not a multiple of 3; slice triplets need D = 3 x nodes")
    return image.reshape(*lead, d // 3, 3, h, w)


class SliceTriplets(Transform):
    """Array transform around `slice_triplets`."""

    def __call__(self, image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        return slice_triplets(image)


class _Delegating(MapTransform):
    def __init__(self, keys: KeysCollection, transform: Transform, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class ResampleToGridd(_Delegating):
    """Dictionary wrapper of `ResampleToGrid`: ``d[key]`` is a `Volume` in, an array out."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, ResampleToGrid(**kwargs), allow_missing_keys)


class HUWindowd(_Delegating):
    """Dictionary wrapper of `HUWindow`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, HUWindow(**kwargs), allow_missing_keys)


class SliceTripletsd(_Delegating):
    """Dictionary wrapper of `SliceTriplets`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, SliceTriplets(), allow_missing_keys)


def ct_preprocess(
    spacing: Sequence[float] = (1.5, 0.75, 0.75),
    size: Sequence[int] = (240, 480, 480),
    axcodes: str = "SLP",
    hu_window: Sequence[float] = (-1000.0, 200.0),
    offset: float = 0.449,
    keys: KeysCollection = "image",
) -> Compose:
    """The one preprocessing chain of the ``ct`` pipeline: ``{"image": Volume}`` -> ``{"image": (D, H, W) float32}``.

    The CT-RATE cache stores its output and clinical prediction runs it on each case, so both see the same voxels.
    """
    return Compose(
        [
            ResampleToGridd(keys, spacing=spacing, size=size, axcodes=axcodes, pad_value=float(hu_window[0])),
            HUWindowd(keys, hu_min=hu_window[0], hu_max=hu_window[1], offset=offset),
        ]
    )
