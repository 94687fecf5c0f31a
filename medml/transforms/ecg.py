"""ECG signal transforms in MONAI's style: an array transform that does the work, a dictionary wrapper that delegates.

Signals are arrays whose last axis is time, e.g. ``(12, T)`` for one 12-lead ECG or ``(N, 12, T)`` for a batch.
The filters follow ProtoECGNet's preprocessing (spec §1.2): an order-1 Butterworth high-pass at 0.5 Hz applied with
zero-phase ``filtfilt`` to remove baseline wander, and no low-pass. Resampling uses polyphase filtering
(`scipy.signal.resample_poly`), which is what a 500 Hz record needs to become a 100 Hz one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import signal as sps

__all__ = [
    "HighPassFilter",
    "HighPassFilterd",
    "Resample",
    "Resampled",
    "Standardize",
    "Standardized",
    "highpass_filter",
    "resample_signal",
]

ArrayLike = np.ndarray | torch.Tensor


@lru_cache(maxsize=32)
def _butter_highpass(fs: float, cutoff: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    return sps.butter(order, cutoff, btype="highpass", fs=fs)


def highpass_filter(signal: np.ndarray, fs: float, cutoff: float = 0.5, order: int = 1) -> np.ndarray:
    """Zero-phase Butterworth high-pass along the last axis (``scipy.signal.filtfilt``), in float64."""
    b, a = _butter_highpass(float(fs), float(cutoff), int(order))
    return sps.filtfilt(b, a, np.asarray(signal, dtype=np.float64), axis=-1)


def resample_signal(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along the last axis from ``fs_in`` to ``fs_out`` Hz (rational ratio), in float64."""
    ratio = Fraction(float(fs_out) / float(fs_in)).limit_denominator(1000)
    x = np.asarray(signal, dtype=np.float64)
    if ratio == 1:
        return x
    return sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


class HighPassFilter(Transform):
    """Remove baseline wander with an order-``order`` Butterworth high-pass applied forwards and backwards.

    Args:
        fs: sampling rate of the signal in Hz.
        cutoff: -3 dB frequency in Hz (0.5 Hz in ProtoECGNet).
        order: filter order (1 in ProtoECGNet; ``filtfilt`` doubles the effective order and cancels the phase).
    """

    def __init__(self, fs: float, cutoff: float = 0.5, order: int = 1) -> None:
        if not 0 < cutoff < fs / 2:
            raise ValueError(f"cutoff {cutoff} Hz must lie between 0 and the Nyquist frequency {fs / 2} Hz")
        self.fs, self.cutoff, self.order = float(fs), float(cutoff), int(order)

    def __call__(self, signal: ArrayLike) -> ArrayLike:
        out = highpass_filter(convert_to_numpy(signal), self.fs, self.cutoff, self.order)
        return convert_to_dst_type(out.astype(np.float32), signal, dtype=_float_dtype(signal))[0]


class Resample(Transform):
    """Change the sampling rate along the last axis with `scipy.signal.resample_poly` (anti-aliased).

    Args:
        fs_in: sampling rate of the input in Hz.
        fs_out: wanted sampling rate in Hz.
    """

    def __init__(self, fs_in: float, fs_out: float) -> None:
        if fs_in <= 0 or fs_out <= 0:
            raise ValueError(f"sampling rates must be positive (got {fs_in} -> {fs_out})")
        self.fs_in, self.fs_out = float(fs_in), float(fs_out)

    def __call__(self, signal: ArrayLike) -> ArrayLike:
        out = resample_signal(convert_to_numpy(signal), self.fs_in, self.fs_out)
        return convert_to_dst_type(out.astype(np.float32), signal, dtype=_float_dtype(signal))[0]


class Standardize(Transform):
    """Per-lead z-score: ``(x - mean[lead]) / std[lead]``, with statistics fitted on the training folds only.

    Args:
        mean: per-lead means, shape ``(L,)``.
        std: per-lead standard deviations, shape ``(L,)``; zeros are treated as ones so flat leads stay finite.
    """

    def __init__(self, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1)
        std = np.asarray(std, dtype=np.float32).reshape(-1, 1)
        self.std = np.where(std > 0, std, 1.0).astype(np.float32)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean {self.mean.shape[0]} and std {self.std.shape[0]} differ in length")

    def __call__(self, signal: ArrayLike) -> ArrayLike:
        x = convert_to_numpy(signal).astype(np.float32, copy=False)
        if x.shape[-2] != self.mean.shape[0]:
            raise ValueError(f"signal has {x.shape[-2]} leads, the standardiser {self.mean.shape[0]}")
        out = (x - self.mean) / self.std
        return convert_to_dst_type(out, signal, dtype=_float_dtype(signal))[0]


def _float_dtype(like: ArrayLike):
    return torch.float32 if isinstance(like, torch.Tensor) else np.float32


class _Delegating(MapTransform):
    """Apply one array transform to every key (MONAI's dictionary-wrapper pattern)."""

    array_transform: Transform

    def __call__(self, data: Mapping[Hashable, ArrayLike]) -> dict[Hashable, ArrayLike]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.array_transform(d[key])
        return d


class HighPassFilterd(_Delegating):
    """Dictionary wrapper of `HighPassFilter`."""

    def __init__(
        self, keys: KeysCollection, fs: float, cutoff: float = 0.5, order: int = 1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = HighPassFilter(fs, cutoff, order)


class Resampled(_Delegating):
    """Dictionary wrapper of `Resample`."""

    def __init__(self, keys: KeysCollection, fs_in: float, fs_out: float, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = Resample(fs_in, fs_out)


class Standardized(_Delegating):
    """Dictionary wrapper of `Standardize`."""

    def __init__(
        self,
        keys: KeysCollection,
        mean: Sequence[float] | np.ndarray,
        std: Sequence[float] | np.ndarray,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = Standardize(mean, std)
