"""Angiography frame preprocessing shared by training, evaluation and prediction."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_unit_grey(frames: np.ndarray) -> np.ndarray:
    """(T, H, W[, 3]) frames of any integer/float type -> float32 grey in [0, 1] (as the JPEG training frames)."""
    arr = np.asarray(frames)
    is_8bit = arr.dtype == np.uint8
    arr = arr.astype(np.float32)
    if arr.ndim == 4:
        arr = arr[..., :3].mean(axis=-1)
    if is_8bit:
        return arr / 255.0
    # 10-16-bit cines and float videos: stretch the video's own range (one scale for all frames).
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / max(hi - lo, 1e-6)


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, H, W) float -> (T, 1, size, size) bilinear (what ``AngioFrames`` does to training frames)."""
    return F.interpolate(frames[:, None], size=(size, size), mode="bilinear", align_corners=False)
