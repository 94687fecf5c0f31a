"""ECG transforms against scipy on known signals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal as sps

from medml.transforms.ecg import (
    HighPassFilter,
    HighPassFilterd,
    Resample,
    Resampled,
    Standardize,
    Standardized,
)

FS = 100


def _sine(freq: float, seconds: float, fs: float, amplitude: float = 1.0, phase: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * fs)) / fs
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def test_highpass_equals_scipy_filtfilt_and_removes_drift():
    drift, beat = _sine(0.1, 30, FS, 1.0), _sine(10, 30, FS, 0.5, phase=1.1)
    x = np.stack([drift + beat, 2 * drift - beat]).astype(np.float32)  # two "leads"
    out = HighPassFilter(FS)(x)
    b, a = sps.butter(1, 0.5, btype="highpass", fs=FS)
    np.testing.assert_allclose(out, sps.filtfilt(b, a, x.astype(np.float64), axis=-1), atol=1e-5)
    assert out.dtype == np.float32 and out.shape == x.shape
    inner = slice(5 * FS, -5 * FS)  # away from the filter's edge transients
    residual_drift = out[0, inner] - beat[inner]
    assert np.sqrt(np.mean(residual_drift**2)) < 0.1 * np.sqrt(np.mean(drift[inner] ** 2))
    # The 10 Hz component passes almost unchanged: project onto it.
    kept = np.dot(out[0, inner], beat[inner]) / np.dot(beat[inner], beat[inner])
    assert kept == pytest.approx(1.0, abs=0.02)


def test_highpass_batch_tensor_and_dict_wrapper_agree():
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((3, 12, 1000)).astype(np.float32)
    per_record = np.stack([HighPassFilter(FS)(r) for r in batch])
    np.testing.assert_allclose(HighPassFilter(FS)(batch), per_record, atol=1e-6)
    as_tensor = HighPassFilter(FS)(torch.from_numpy(batch[0]))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_tensor.numpy(), per_record[0], atol=1e-6)
    d = HighPassFilterd(keys="signal", fs=FS)({"signal": batch[1], "ecg_id": 7})
    np.testing.assert_allclose(d["signal"], per_record[1], atol=1e-6)
    assert d["ecg_id"] == 7
    with pytest.raises(ValueError, match="Nyquist"):
        HighPassFilter(FS, cutoff=60)


def test_resample_500_to_100_equals_scipy_and_keeps_the_waveform():
    x = np.stack([_sine(5, 10, 500), _sine(2, 10, 500, 0.7)]).astype(np.float32)
    out = Resample(500, 100)(x)
    assert out.shape == (2, 1000)
    np.testing.assert_allclose(out, sps.resample_poly(x.astype(np.float64), 1, 5, axis=-1), atol=1e-6)
    truth = np.stack([_sine(5, 10, 100), _sine(2, 10, 100, 0.7)])
    np.testing.assert_allclose(out[:, 50:-50], truth[:, 50:-50], atol=0.01)
    d = Resampled(keys=["signal"], fs_in=500, fs_out=100)({"signal": x})
    np.testing.assert_allclose(d["signal"], out)
    assert Resample(250, 100)(np.zeros((12, 2500))).shape == (12, 1000)  # rational ratio 2/5


def test_standardize_per_lead_and_flat_lead_stays_finite():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 500)) * np.array([[1.0], [3.0], [0.0]]) + np.array([[2.0], [-1.0], [5.0]])
    mean, std = x.mean(axis=1), x.std(axis=1)
    out = Standardize(mean, std)(x.astype(np.float32))
    np.testing.assert_allclose(out[:2].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out[:2].std(axis=1), 1, atol=1e-4)
    assert np.isfinite(out).all() and np.allclose(out[2], 0, atol=1e-5)  # zero std is treated as 1
    d = Standardized("signal", mean, std)({"signal": torch.from_numpy(x.astype(np.float32))})
    np.testing.assert_allclose(d["signal"].numpy(), out, atol=1e-6)
    with pytest.raises(ValueError, match="leads"):
        Standardize(mean, std)(np.zeros((12, 10), dtype=np.float32))
