"""ECG signal transforms in MONAI's style: an array transform that does the work, a dictionary wrapper that delegates.

Signals are arrays whose last axis is time, e.g. ``(12, T)`` for one 12-lead ECG or ``(N, 12, T)`` for a batch.
The filters follow ProtoECGNet's preprocessing (spec §1.2): an order-1 Butterworth high-pass at 0.5 Hz applied with
zero-phase ``filtfilt`` to remove baseline wander, and no low-pass. Resampling uses polyphase filtering
(`scipy.signal.resample_poly`), which is what a 500 Hz record needs to become a 100 Hz one.

`resample_highpass` composes them once: the PTB-XL cache applies it to every training record and the ``ecg``
pipeline to every clinical ECG, so both get the same preprocessing. Dictionary transforms read the input rate from
the data (``fs_key``) when it varies per record, as it does for clinical files, and update it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.transforms import Compose, MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy, get_equivalent_dtype
from scipy import signal as sps

__all__ = [
    "FitLength",
    "FitLengthd",
    "HighPassFilter",
    "HighPassFilterd",
    "Resample",
    "Resampled",
    "Standardize",
    "Standardized",
    "highpass_filter",
    "resample_highpass",
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
        dtype: output dtype (the filter itself runs in float64).
    """

    def __init__(self, fs: float, cutoff: float = 0.5, order: int = 1, dtype: DtypeLike = np.float32) -> None:
        if not 0 < cutoff < fs / 2:
            raise ValueError(f"cutoff {cutoff} Hz must lie between 0 and the Nyquist frequency {fs / 2} Hz")
        self.fs, self.cutoff, self.order, self.dtype = float(fs), float(cutoff), int(order), dtype

    def __call__(self, signal: ArrayLike) -> ArrayLike:
        out = highpass_filter(convert_to_numpy(signal), self.fs, self.cutoff, self.order)
        return _convert(out, signal, self.dtype)


class Resample(Transform):
    """Change the sampling rate along the last axis with `scipy.signal.resample_poly` (anti-aliased).

    Args:
        fs_in: sampling rate of the input in Hz.
        fs_out: wanted sampling rate in Hz.
        dtype: output dtype (resampling itself runs in float64).
    """

    def __init__(self, fs_in: float, fs_out: float, dtype: DtypeLike = np.float32) -> None:
        if fs_in <= 0 or fs_out <= 0:
            raise ValueError(f"sampling rates must be positive (got {fs_in} -> {fs_out})")
        self.fs_in, self.fs_out, self.dtype = float(fs_in), float(fs_out), dtype

    def __call__(self, signal: ArrayLike) -> ArrayLike:
        out = resample_signal(convert_to_numpy(signal), self.fs_in, self.fs_out)
        return _convert(out, signal, self.dtype)


class FitLength(Transform):
    """Crop or zero-pad the last axis to ``length`` samples.

    Longer signals keep a window from the start or the centre (start ``(n - length) // 2``); shorter ones are padded
    with zeros at the end (zero is the baseline of a high-passed ECG). Written here rather than with MONAI's
    `SpatialCrop`/`SpatialPad` because those return tensors with metadata and MONAI's centre rounds differently for
    odd lengths.

    Args:
        length: samples to return.
        crop: "start" or "center".
    """

    def __init__(self, length: int, crop: str = "start") -> None:
        if length <= 0 or crop not in ("start", "center"):
            raise ValueError(f"length must be positive and crop 'start' or 'center' (got {length}, {crop!r})")
        self.length, self.crop = int(length), crop

    def __call__(self, signal: ArrayLike) -> ArrayLike:
        n = signal.shape[-1]
        if n > self.length:
            start = 0 if self.crop == "start" else (n - self.length) // 2
            return signal[..., start : start + self.length]
        if n < self.length:
            x = convert_to_numpy(signal)
            return convert_to_dst_type(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.length - n)]), signal)[0]
        return signal


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


def _convert(out: np.ndarray, like: ArrayLike, dtype: DtypeLike) -> ArrayLike:
    """``out`` as ``dtype``, in the container type (numpy or torch, same device) of ``like``."""
    return convert_to_dst_type(out.astype(dtype, copy=False), like, dtype=get_equivalent_dtype(dtype, type(like)))[0]


class _Delegating(MapTransform):
    """Apply one array transform to every key (MONAI's dictionary-wrapper pattern)."""

    array_transform: Transform

    def __call__(self, data: Mapping[Hashable, ArrayLike]) -> dict[Hashable, ArrayLike]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.array_transform(d[key])
        return d


class HighPassFilterd(MapTransform):
    """Dictionary wrapper of `HighPassFilter`; with ``fs=None`` the rate is read from ``data[fs_key]``."""

    def __init__(
        self,
        keys: KeysCollection,
        fs: float | None = None,
        cutoff: float = 0.5,
        order: int = 1,
        dtype: DtypeLike = np.float32,
        fs_key: str = "fs",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fs, self.cutoff, self.order, self.dtype, self.fs_key = fs, cutoff, order, dtype, fs_key

    def __call__(self, data: Mapping[Hashable, ArrayLike]) -> dict[Hashable, ArrayLike]:
        d = dict(data)
        fs = self.fs if self.fs is not None else float(d[self.fs_key])
        transform = HighPassFilter(fs, self.cutoff, self.order, self.dtype)
        for key in self.key_iterator(d):
            d[key] = transform(d[key])
        return d


class Resampled(MapTransform):
    """Dictionary wrapper of `Resample`; with ``fs_in=None`` the input rate is read from ``data[fs_key]``, which
    then holds ``fs_out``."""

    def __init__(
        self,
        keys: KeysCollection,
        fs_in: float | None = None,
        fs_out: float | None = None,
        dtype: DtypeLike = np.float32,
        fs_key: str = "fs",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if fs_out is None:
            raise ValueError("Resampled needs fs_out")
        self.fs_in, self.fs_out, self.dtype, self.fs_key = fs_in, float(fs_out), dtype, fs_key

    def __call__(self, data: Mapping[Hashable, ArrayLike]) -> dict[Hashable, ArrayLike]:
        d = dict(data)
        fs_in = self.fs_in if self.fs_in is not None else float(d[self.fs_key])
        transform = Resample(fs_in, self.fs_out, self.dtype)
        for key in self.key_iterator(d):
            d[key] = transform(d[key])
        if self.fs_in is None:
            d[self.fs_key] = self.fs_out
        return d


class FitLengthd(_Delegating):
    """Dictionary wrapper of `FitLength`; ``valid_key`` (if given) receives how many samples are signal, not pad."""

    def __init__(
        self,
        keys: KeysCollection,
        length: int,
        crop: str = "start",
        valid_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = FitLength(length, crop)
        self.valid_key = valid_key

    def __call__(self, data: Mapping[Hashable, ArrayLike]) -> dict[Hashable, ArrayLike]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.valid_key is not None:
                d[self.valid_key] = min(d[key].shape[-1], self.array_transform.length)
            d[key] = self.array_transform(d[key])
        return d


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


def resample_highpass(
    rate: float, highpass: bool = True, keys: KeysCollection = "signal", fs_key: str = "fs"
) -> Compose:
    """ProtoECGNet's signal preprocessing as one `Compose` over ``{"signal": (..., T) mV, "fs": Hz}``: resample to
    ``rate``, then (``highpass``) the order-1 0.5 Hz zero-phase high-pass; float64 out, so the caller chooses when
    to round. The PTB-XL cache (`medml.data.ptbxl`) and clinical ECGs in the ``ecg`` pipeline both use it.
    """
    steps: list = [Resampled(keys, fs_out=rate, dtype=np.float64, fs_key=fs_key)]
    if highpass:
        steps.append(HighPassFilterd(keys, fs=rate, cutoff=0.5, order=1, dtype=np.float64))
    return Compose(steps)
