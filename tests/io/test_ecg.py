"""WFDB and DICOM waveform ECGs read into one record type, in the standard lead order and in mV."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from medml.errors import SignalError
from medml.io import STANDARD_LEADS, read_ecg
from medml.io.ecg import standard_lead_name
from medml.io.synthetic import write_dicom_ecg

SHUFFLED = ["V6", "aVF", "I", "V1", "III", "V3", "aVR", "II", "V5", "aVL", "V2", "V4"]


def _write_wfdb(folder, name, signal_mv, fs, lead_names, units="mV"):
    scale = {"mV": 1.0, "uV": 1000.0}[units]
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[units] * len(lead_names),
        sig_name=list(lead_names),
        p_signal=(np.asarray(signal_mv) * scale).T,
        fmt=["16"] * len(lead_names),
        adc_gain=[1000.0 / scale * 1.0] * len(lead_names),
        baseline=[0] * len(lead_names),
        write_dir=str(folder),
    )
    return folder / f"{name}.hea"


def test_pydicom_waveform_ecg():
    from pydicom.data import get_testdata_file

    record = read_ecg(get_testdata_file("waveform_ecg.dcm"))
    assert record.signal.shape == (12, 10000) and record.signal.dtype == np.float32
    assert record.fs == 1000 and record.lead_names == STANDARD_LEADS
    # Einthoven: III = II - I holds for a real recording (to the quantisation of 1.25 uV)
    np.testing.assert_allclose(record.signal[2], record.signal[1] - record.signal[0], atol=0.01)
    assert 0.05 < np.abs(record.signal).max() < 10  # mV range, not uV


def test_dicom_lead_order_is_standardised(dicom_ecg_file, ecg_signal):
    signal, fs = ecg_signal
    record = read_ecg(dicom_ecg_file)
    assert record.fs == fs
    np.testing.assert_allclose(record.signal, signal, atol=0.5e-3)  # stored at 0.5 uV per unit


def test_wfdb_any_order_any_names_any_rate(tmp_path, ecg_signal):
    signal, _ = ecg_signal
    names = ["v6", "AVF", "Lead I", "V1", "III", "V3", "AVR", "II", "V5", "aVL", "V2", "V4"]
    rows = np.stack([signal[STANDARD_LEADS.index(lead)] for lead in SHUFFLED])
    hea = _write_wfdb(tmp_path, "rec", rows, 250, names, units="uV")
    record = read_ecg(hea)
    assert record.fs == 250
    np.testing.assert_allclose(record.signal, signal, atol=2e-3)
    # the record path without extension works too, as wfdb.rdsamp takes it
    np.testing.assert_array_equal(read_ecg(tmp_path / "rec").signal, record.signal)


def test_dicom_and_wfdb_agree(tmp_path, ecg_signal):
    signal, fs = ecg_signal
    dicom = read_ecg(write_dicom_ecg(tmp_path / "a.dcm", signal, fs, STANDARD_LEADS, sensitivity_uv=1.0))
    wfdb_record = read_ecg(_write_wfdb(tmp_path, "a", signal, fs, STANDARD_LEADS))
    np.testing.assert_allclose(dicom.signal, wfdb_record.signal, atol=2e-3)
    assert dicom.fs == wfdb_record.fs


def test_eight_lead_record_gets_limb_leads(tmp_path, ecg_signal):
    signal, fs = ecg_signal
    eight = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    rows = np.stack([signal[STANDARD_LEADS.index(lead)] for lead in eight])
    record = read_ecg(_write_wfdb(tmp_path, "eight", rows, fs, eight))
    lead_i, lead_ii = signal[0], signal[1]
    np.testing.assert_allclose(record.signal[2], lead_ii - lead_i, atol=3e-3)
    np.testing.assert_allclose(record.signal[3], -(lead_i + lead_ii) / 2, atol=3e-3)
    np.testing.assert_allclose(record.signal[4], lead_i - lead_ii / 2, atol=3e-3)
    np.testing.assert_allclose(record.signal[5], lead_ii - lead_i / 2, atol=3e-3)
    assert record.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    with pytest.raises(SignalError, match="missing lead"):
        read_ecg(tmp_path / "eight", derive_limb_leads=False)


def test_missing_precordial_lead(tmp_path, ecg_signal):
    signal, fs = ecg_signal
    leads = [lead for lead in STANDARD_LEADS if lead != "V3"]
    rows = np.stack([signal[STANDARD_LEADS.index(lead)] for lead in leads])
    with pytest.raises(SignalError, match="V3") as info:
        read_ecg(_write_wfdb(tmp_path, "noV3", rows, fs, leads))
    assert info.value.path.endswith("noV3.hea")


def test_nan_and_flat_leads(tmp_path, ecg_signal):
    signal, fs = ecg_signal
    flat = signal.copy()
    flat[7] = 0.2  # V2 disconnected: a constant offset
    with pytest.raises(SignalError, match="flat lead.*V2"):
        read_ecg(write_dicom_ecg(tmp_path / "flat.dcm", flat, fs))
    nan = signal.copy()
    nan[9, 100:200] = np.nan  # wfdb writes NaN as its missing-sample value and reads it back as NaN
    with pytest.raises(SignalError, match="NaN.*V4"):
        read_ecg(_write_wfdb(tmp_path, "nan", nan, fs, STANDARD_LEADS))
    assert read_ecg(write_dicom_ecg(tmp_path / "ok.dcm", signal, fs)).signal.shape == (12, signal.shape[1])


@pytest.mark.parametrize(
    ("label", "lead"),
    [("AVR", "aVR"), ("Lead II", "II"), ("Lead I (Einthoven)", "I"), ("v4", "V4"), ("D3", "III"), ("MLII", None)],
)
def test_lead_names(label, lead):
    assert standard_lead_name(label) == lead
