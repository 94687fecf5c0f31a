"""Shared, session-scoped clinical files for the I/O tests (written once, read by many tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medml.io.synthetic import write_ct_series, write_dicom_ecg, write_xa_cine

# An oblique orientation (rotated about all three axes) so any x/y/z or LPS/RAS mix-up shows.
_C, _S = np.cos(np.radians(20)), np.sin(np.radians(20))
OBLIQUE = (float(_C), float(_S), 0.0, float(-_S * 0.9), float(_C * 0.9), float(np.sqrt(1 - 0.81)))


def _orthonormal(iop):
    row = np.asarray(iop[:3], float)
    col = np.asarray(iop[3:], float)
    col = col - row * (row @ col)
    return tuple(float(v) for v in (*row / np.linalg.norm(row), *col / np.linalg.norm(col)))


OBLIQUE = _orthonormal(OBLIQUE)


@pytest.fixture(scope="session")
def two_series_folder(tmp_path_factory) -> Path:
    """One folder (named after the patient, as some exports do) holding two interleaved series.

    Series 3: oblique, shuffled InstanceNumbers, extension-less random file names.
    Series 4: axial, ``slice_XXX.dcm`` names.
    """
    root = tmp_path_factory.mktemp("two_series")
    folder = root / "Synthetic_Patient_SYN0001"
    write_ct_series(
        folder,
        shape=(7, 20, 24),
        spacing=(0.7, 0.8, 2.5),
        orientation=OBLIQUE,
        shuffle_instance_numbers=True,
        series_number=3,
        seed=1,
    )
    staging = root / "staging"
    write_ct_series(staging, shape=(5, 16, 18), spacing=(0.9, 0.9, 3.0), series_number=4, file_names="index", seed=2)
    for path in staging.iterdir():
        shutil.move(str(path), folder / path.name)
    staging.rmdir()
    return folder


@pytest.fixture(scope="session")
def xa_cine(tmp_path_factory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (6, 24, 30), dtype=np.uint8)
    path = write_xa_cine(tmp_path_factory.mktemp("xa") / "cine", frames, 66.7)
    return path, frames


@pytest.fixture(scope="session")
def ecg_signal() -> tuple[np.ndarray, float]:
    """(12, n) mV in the standard order: distinct smooth waves per lead, 500 Hz, 2 s."""
    fs = 500.0
    t = np.arange(int(2 * fs)) / fs
    leads = [0.8 * np.sin(2 * np.pi * (1.0 + 0.3 * k) * t + k) + 0.05 * k for k in range(12)]
    return np.stack(leads).astype(np.float64), fs


@pytest.fixture(scope="session")
def dicom_ecg_file(tmp_path_factory, ecg_signal) -> Path:
    signal, fs = ecg_signal
    order = ["V6", "aVF", "I", "V1", "III", "V3", "aVR", "II", "V5", "aVL", "V2", "V4"]
    from medml.io.types import STANDARD_LEADS

    rows = np.stack([signal[STANDARD_LEADS.index(lead)] for lead in order])
    return write_dicom_ecg(tmp_path_factory.mktemp("ecg") / "ecg.dcm", rows, fs, order, sensitivity_uv=0.5)
