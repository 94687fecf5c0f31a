"""Angiography frame transforms in MONAI's style (an array transform that does the work, a dictionary wrapper that
delegates), and `frame_preprocessing`: the one composition that training, evaluation and prediction all use, so
the model sees the same numbers from a MOSXAV JPEG and from a clinical cine.

Frames are channel-first arrays ``(T, H, W)`` (``(T, H, W, C)`` for colour video): the leading axis is the frame
(one for a single training frame), which MONAI's spatial transforms treat as channels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import CastToTyped, Compose, CopyItemsd, MapTransform, Resized, ToNumpyd, Transform
from monai.utils import TransformBackends, convert_to_numpy

__all__ = ["ToUnitGrey", "ToUnitGreyd", "frame_preprocessing", "to_unit_grey"]


def to_unit_grey(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """(T, H, W[, C]) frames of any integer/float type -> float32 grey (T, H, W) in [0, 1].

    8-bit frames are divided by 255 (as the dataset's JPEG frames); deeper cines and float videos are stretched
    over the video's own range, one scale for all frames. Colour is the mean of the first three channels.
    """
    arr = convert_to_numpy(frames)
    is_8bit = arr.dtype == np.uint8
    arr = arr.astype(np.float32)
    if arr.ndim == 4:
        arr = arr[..., :3].mean(axis=-1)
    if is_8bit:
        return arr / 255.0
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / max(hi - lo, 1e-6)


class ToUnitGrey(Transform):
    """Frames of any type -> float32 grey in [0, 1] (`to_unit_grey`)."""

    backend = [TransformBackends.NUMPY]

    def __call__(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        return to_unit_grey(frames)


class ToUnitGreyd(MapTransform):
    """Dictionary wrapper of `ToUnitGrey`."""

    backend = ToUnitGrey.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToUnitGrey()

    def __call__(self, data: Mapping[Hashable, np.ndarray]) -> dict[Hashable, np.ndarray]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def frame_preprocessing(size: int | tuple[int, int] | None, native_key: str | None = None) -> Compose:
    """The angio preprocessing of ``{"image": frames, "label": ids (optional)}``, both channel-first.

    ``image``: float32 grey in [0, 1] (`ToUnitGreyd`), then bilinear to ``size`` (no antialiasing, half-pixel
    centres: what ``torch.nn.functional.interpolate`` does); ``label``: nearest to ``size``, int64. ``size=None``
    keeps the frames' own size. ``native_key`` also keeps the grey frames at their own size under that key
    (prediction writes its outputs at the source size).
    """
    steps: list = [ToUnitGreyd("image")]
    if native_key is not None:
        steps.append(CopyItemsd("image", names=native_key))
    if size is not None:
        spatial = (size, size) if isinstance(size, int) else tuple(size)
        keys = ["image", "label"]
        steps += [
            Resized(keys, spatial, mode=("bilinear", "nearest"), allow_missing_keys=True),
            ToNumpyd(keys, allow_missing_keys=True),
            CastToTyped(keys, dtype=(np.float32, np.int64), allow_missing_keys=True),
        ]
    return Compose(steps)
