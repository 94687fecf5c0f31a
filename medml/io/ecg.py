"""12-lead ECGs from WFDB records and DICOM waveform objects, read into one `EcgRecord`.

Whatever the source order and naming (``AVR``, ``Lead II``, SCP-ECG or MDC codes), the signal comes back as
(12, n) float32 millivolts in the standard order I, II, III, aVR, aVL, aVF, V1..V6. Records that store only the
eight independent leads (I, II, V1..V6), as many carts do, get III, aVR, aVL and aVF from Einthoven's and
Goldberger's equations; any other missing lead, a NaN or a flat line is a `SignalError`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from medml.errors import CorruptFileError, SignalError, UnsupportedFormatError
from medml.io.dicom import common_meta, header_float, header_int, read_dataset
from medml.io.guard import check_memory, contained, reading
from medml.io.types import STANDARD_LEADS, EcgRecord

# Lead codes: SCP-ECG (DICOM CID 3001) and ISO/IEEE 11073 MDC ("2:n" as DICOM writes them).
LEAD_CODES = {
    "5.6.3-9-1": "I",
    "5.6.3-9-2": "II",
    "5.6.3-9-61": "III",
    "5.6.3-9-62": "aVR",
    "5.6.3-9-63": "aVL",
    "5.6.3-9-64": "aVF",
    "5.6.3-9-3": "V1",
    "5.6.3-9-4": "V2",
    "5.6.3-9-5": "V3",
    "5.6.3-9-6": "V4",
    "5.6.3-9-7": "V5",
    "5.6.3-9-8": "V6",
    "2:1": "I",
    "2:2": "II",
    "2:61": "III",
    "2:62": "aVR",
    "2:63": "aVL",
    "2:64": "aVF",
    "2:3": "V1",
    "2:4": "V2",
    "2:5": "V3",
    "2:6": "V4",
    "2:7": "V5",
    "2:8": "V6",
}
_ALIASES = {"D1": "I", "D2": "II", "D3": "III", "DI": "I", "DII": "II", "DIII": "III"}
# Below this peak-to-peak amplitude (mV) a lead carries no ECG: a disconnected electrode or a zero-filled channel.
FLAT_LEAD_MV = 0.005
UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}


def standard_lead_name(name: str) -> str | None:
    """Map a lead label (``AVR``, ``Lead II``, ``lead_v1``, ``D2``, ``Lead I (Einthoven)``) to its standard name."""
    text = re.sub(r"\(.*?\)", "", str(name)).strip()
    text = re.sub(r"^(lead|ecg)[\s_-]*", "", text, flags=re.IGNORECASE).strip()
    upper = text.upper().replace(" ", "")
    if upper in _ALIASES:
        return _ALIASES[upper]
    for lead in STANDARD_LEADS:
        if upper == lead.upper():
            return lead
    return None


def assemble_leads(
    signals: np.ndarray,
    names: list[str],
    fs: float,
    path: str | Path,
    *,
    derive_limb_leads: bool = True,
    check: bool = True,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, list[str]]:
    """Reorder (leads, n) mV signals to the standard 12, deriving missing limb leads from I and II if allowed.

    Returns:
        The (12, n) signal (``dtype``, float32 by default) and the list of leads that were derived rather than recorded.

    Raises:
        SignalError: a lead missing (and not derivable), NaN samples, a flat lead, or fewer than 1 s of samples.
    """
    by_name: dict[str, np.ndarray] = {}
    for row, name in zip(signals, names, strict=True):
        lead = standard_lead_name(name)
        if lead is not None and lead not in by_name:
            by_name[lead] = np.asarray(row, np.float64)
    derived: list[str] = []
    if derive_limb_leads and "I" in by_name and "II" in by_name:
        lead_i, lead_ii = by_name["I"], by_name["II"]
        formulas = {
            "III": lambda: lead_ii - lead_i,
            "aVR": lambda: -(lead_i + lead_ii) / 2,
            "aVL": lambda: lead_i - lead_ii / 2,
            "aVF": lambda: lead_ii - lead_i / 2,
        }
        for lead, formula in formulas.items():
            if lead not in by_name:
                by_name[lead] = formula()
                derived.append(lead)
    missing = [lead for lead in STANDARD_LEADS if lead not in by_name]
    if missing:
        raise SignalError(f"missing lead(s) {', '.join(missing)} (found: {', '.join(map(str, names))})", path)
    signal = np.stack([by_name[lead] for lead in STANDARD_LEADS]).astype(dtype)
    if check:
        check_signal(signal, fs, path)
    return signal, derived


def check_signal(signal: np.ndarray, fs: float, path: str | Path, *, flat_lead_mv: float = FLAT_LEAD_MV) -> None:
    """Raise `SignalError` for NaN, flat leads, a non-positive sampling rate or under one second of signal.

    ``flat_lead_mv``: peak-to-peak amplitude (mV) below which a lead counts as flat.
    """
    if not fs or fs <= 0 or not np.isfinite(fs):
        raise SignalError(f"invalid sampling frequency {fs}", path)
    if signal.shape[1] < fs:
        raise SignalError(f"only {signal.shape[1]} samples ({signal.shape[1] / fs:.2f} s); need at least 1 s", path)
    bad = [STANDARD_LEADS[i] for i in range(signal.shape[0]) if not np.all(np.isfinite(signal[i]))]
    if bad:
        raise SignalError(f"NaN or infinite samples in lead(s) {', '.join(bad)}", path)
    flat = [STANDARD_LEADS[i] for i in range(signal.shape[0]) if np.ptp(signal[i]) < flat_lead_mv]
    if flat:
        raise SignalError(f"flat lead(s) {', '.join(flat)} (peak-to-peak below {flat_lead_mv} mV)", path)


_GAIN = re.compile(r"^(?P<gain>[-+0-9.eE]+)(?:\((?P<baseline>-?\d+)\))?(?:/(?P<units>\S+))?$")


def _parse_simple_header(text: str) -> tuple[float, int, str, np.ndarray, np.ndarray, list[str], list[str]] | None:
    """(fs, samples, dat file, gains, baselines, units, names) of a single-file format-16 header, else None.

    wfdb.rdrecord spends about a millisecond per call on header and format generality, which dominates 10-s ECGs
    (PTB-XL's 21,799 records are read this way when the cache is built); a single little-endian int16 file with
    no offsets, skew or multi-frame samples, which is every PTB-XL record and most cart exports, is read with
    `numpy.fromfile` instead, and everything else goes to wfdb. Tests check both paths against wfdb.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    head = lines[0].split()
    if len(head) < 4 or "/" in head[0] or not head[1].isdigit():
        return None
    nsig = int(head[1])
    try:
        fs, siglen = float(head[2].split("/")[0].split("(")[0]), int(head[3])
    except ValueError:
        return None
    if len(lines) != nsig + 1 or nsig == 0:
        return None
    files, gains, baselines, units, names = set(), [], [], [], []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) < 9 or parts[1] != "16":
            return None
        match = _GAIN.match(parts[2])
        if match is None or float(match["gain"]) == 0:
            return None
        files.add(parts[0])
        gains.append(float(match["gain"]))
        baselines.append(int(match["baseline"]) if match["baseline"] is not None else int(parts[4]))
        units.append(match["units"] or "mV")
        names.append(" ".join(parts[8:]))
    if len(files) != 1 or "/" in next(iter(files)):
        return None
    return fs, siglen, files.pop(), np.array(gains), np.array(baselines, dtype=np.float64), units, names


def _read_format16(dat: Path, samples: int, gains: np.ndarray, baselines: np.ndarray) -> np.ndarray:
    """Physical (channels, samples) float64 values of a format-16 file; -32768 (invalid sample) becomes NaN."""
    try:
        raw = np.fromfile(dat, dtype="<i2")
    except OSError as exc:
        raise CorruptFileError(f"unreadable signal file ({exc.__class__.__name__})", dat) from None
    if raw.size != samples * len(gains):
        raise CorruptFileError(f"expected {samples * len(gains)} samples in {dat.name}, found {raw.size}", dat)
    digital = raw.reshape(samples, len(gains)).T
    signal = (digital - baselines[:, None]) / gains[:, None]
    signal[digital == -32768] = np.nan  # as wfdb does
    return signal


def read_wfdb(
    path: str | Path, *, derive_limb_leads: bool = True, check: bool = True, dtype: np.dtype | type = np.float32
) -> EcgRecord:
    """Read a WFDB record (``.hea`` + signal files, any sampling rate and format) as an `EcgRecord`.

    The one WFDB reader: clinical files and PTB-XL records (`medml.data.ptbxl`) both come through here.

    Args:
        path: the record path, with or without ``.hea``.
        derive_limb_leads: compute missing III/aVR/aVL/aVF from I and II.
        check: reject NaN and flat leads.
        dtype: of the signal; float64 keeps the full precision of the stored samples (the PTB-XL cache uses it,
            so the cache holds what it held before this reader was shared).

    Raises:
        UnsupportedFormatError: no header. CorruptFileError: unreadable header, missing or truncated signal file.
        SignalError: leads missing, units not a voltage; with ``check``, NaN or flat leads.
    """
    path = Path(path)
    record_path = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    hea = record_path.with_name(record_path.name + ".hea")
    if not hea.is_file():
        raise UnsupportedFormatError("no WFDB header (.hea) for this record", hea)
    with reading(hea, "WFDB record"):
        return _read_wfdb(record_path, hea, derive_limb_leads, check, dtype)


def _read_wfdb(record_path: Path, hea: Path, derive_limb_leads: bool, check: bool, dtype: Any) -> EcgRecord:
    try:
        text = hea.read_text(errors="replace")
        simple = _parse_simple_header(text)
    except (OSError, IndexError) as exc:
        raise CorruptFileError(f"unreadable WFDB header ({exc.__class__.__name__})", hea) from None
    if simple is not None:
        fs, samples, dat_name, gains, baselines, units, names = simple
        # the checks check_wfdb_header makes, without wfdb's per-call cost on this fast path
        if not math.isfinite(fs) or fs <= 0:
            raise SignalError(f"invalid sampling frequency {fs}", hea)
        dat = contained(dat_name, hea, "WFDB signal file")
        check_memory(len(gains) * samples * 20, f"a WFDB record of {len(gains)} signals x {samples} samples", hea)
        signals = _read_format16(dat, samples, gains, baselines)
        record_name = text.split(None, 1)[0]
        comments = [ln.strip().strip(" \t#") for ln in text.splitlines() if ln.strip().startswith("#")]
    else:
        check_wfdb_header(record_path, hea)
        signals, fs, units, names, record_name, comments = _read_with_wfdb(record_path, hea)
    scale = np.array([UNIT_TO_MV.get(str(u).strip().lower(), np.nan) for u in units])
    if np.any(np.isnan(scale)):
        bad = sorted({u for u, s in zip(units, scale, strict=True) if np.isnan(s)})
        raise SignalError(f"unknown signal unit(s) {bad}; expected mV, uV or V", hea)
    signal, derived = assemble_leads(
        signals * scale[:, None], names, fs, hea, derive_limb_leads=derive_limb_leads, check=check, dtype=dtype
    )
    meta: dict[str, Any] = {
        "record": record_name,
        "source_leads": names,
        "derived_leads": derived,
        "comments": comments,
    }
    return EcgRecord(signal, fs, STANDARD_LEADS, meta)


def check_wfdb_header(record_path: Path, hea: Path) -> None:
    """Before any sample is read: the signal files lie in the header's folder, the sampling rate is positive and
    finite, and the samples fit the memory budget."""
    import wfdb

    try:
        header = wfdb.rdheader(str(record_path))
    except Exception as exc:  # wfdb raises ValueError, IndexError, ... on malformed headers
        raise CorruptFileError(f"cannot read WFDB header ({type(exc).__name__}: {str(exc)[:200]})", hea) from None
    for name in header.file_name or []:
        if name and name != "~":  # "~": the signal is not stored in a file
            contained(str(name), hea, "WFDB signal file")
    _check_declared_fs(hea)  # wfdb silently falls back to 250 Hz for a rate it cannot parse (a negative one)
    fs = header.fs
    if fs is None or not math.isfinite(float(fs)) or float(fs) <= 0:
        raise SignalError(f"invalid sampling frequency {fs}", hea)
    n_sig, sig_len = int(header.n_sig or 0), int(header.sig_len or 0)
    # digital and physical copies of the samples (int + float64), then the float32 result
    check_memory(n_sig * max(sig_len, 0) * 20, f"a WFDB record of {n_sig} signals x {sig_len} samples", hea)


def _check_declared_fs(hea: Path) -> None:
    """The sampling rate on the record line (``name n_sig fs[/counter][(base)] ...``) is a positive number."""
    for line in hea.read_text("latin-1").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 3:
            return  # no rate given: WFDB's documented default of 250 Hz applies
        text = re.split(r"[/(]", fields[2], maxsplit=1)[0]
        try:
            fs = float(text)
        except ValueError:
            raise SignalError(f"invalid sampling frequency {fields[2]!r}", hea) from None
        if not math.isfinite(fs) or fs <= 0:
            raise SignalError(f"invalid sampling frequency {fields[2]!r}", hea)
        return


def _read_with_wfdb(record_path: Path, hea: Path) -> tuple[np.ndarray, float, list[str], list[str], str, list[str]]:
    """(signals, fs, units, names, record name, comments) of any record wfdb reads (other formats, multi-file)."""
    import wfdb

    try:
        record = wfdb.rdrecord(str(record_path))
    except FileNotFoundError as exc:
        raise CorruptFileError(f"WFDB signal file missing ({Path(str(exc.filename or exc)).name})", hea) from None
    except Exception as exc:  # wfdb raises ValueError, IndexError, struct errors on malformed records
        raise CorruptFileError(f"cannot read WFDB record ({type(exc).__name__}: {str(exc)[:200]})", hea) from None
    if record.p_signal is None:
        raise CorruptFileError("WFDB record has no physical signal", hea)
    units = [str(u or "mV") for u in (record.units or ["mV"] * record.n_sig)]
    return (
        record.p_signal.T,
        float(record.fs),
        units,
        list(record.sig_name),
        record.record_name,
        list(record.comments or []),
    )


def _channel_lead(channel: Any) -> str:
    source = channel.ChannelSourceSequence[0] if channel.get("ChannelSourceSequence") else None
    if source is None:
        return str(channel.get("ChannelLabel", ""))
    code = str(source.get("CodeValue", ""))
    if code in LEAD_CODES:
        return LEAD_CODES[code]
    return str(source.get("CodeMeaning", channel.get("ChannelLabel", code)))


def _channel_unit_scale(channel: Any) -> float:
    units = channel.get("ChannelSensitivityUnitsSequence")
    code = str(units[0].get("CodeValue", "uV")) if units else "uV"
    return UNIT_TO_MV.get(code.strip().lower(), 1e-3)


def read_dicom_ecg(path: str | Path, *, derive_limb_leads: bool = True, check: bool = True) -> EcgRecord:
    """Read a DICOM waveform ECG (12-lead, general or ambulatory) from its rhythm multiplex group."""
    path = Path(path)
    with reading(path, "DICOM waveform"):
        return _read_dicom_ecg(path, derive_limb_leads, check)


def _read_dicom_ecg(path: Path, derive_limb_leads: bool, check: bool) -> EcgRecord:
    ds = read_dataset(path)
    groups = ds.get("WaveformSequence")
    if not groups:
        raise UnsupportedFormatError("no WaveformSequence: not a waveform object", path)
    # Prefer the rhythm group (the full recording) over median beats; else the longest group.
    order = sorted(
        range(len(groups)),
        key=lambda i: (
            "RHYTHM" not in str(groups[i].get("MultiplexGroupLabel", "")).upper(),
            -int(groups[i].get("NumberOfWaveformSamples", 0) or 0),
        ),
    )
    index = order[0]
    group = groups[index]
    samples = header_int(group, "NumberOfWaveformSamples", 0, path)
    channels = header_int(group, "NumberOfWaveformChannels", 0, path)
    check_memory(samples * channels * 16, f"a waveform of {channels} channels x {samples} samples", path)
    fs = header_float(group.get("SamplingFrequency"), "SamplingFrequency", 0.0, path)
    if fs <= 0:
        raise SignalError(f"invalid sampling frequency {fs}", path)
    try:
        data = ds.waveform_array(index)  # (samples, channels) with sensitivity and baseline applied
    except Exception as exc:  # pydicom raises ValueError/AttributeError/KeyError on malformed waveform modules
        raise CorruptFileError(f"cannot decode waveform ({type(exc).__name__}: {str(exc)[:200]})", path) from None
    channels = group.ChannelDefinitionSequence
    if data.shape[1] != len(channels):
        raise CorruptFileError(f"{data.shape[1]} waveform channels but {len(channels)} channel definitions", path)
    scale = np.array([_channel_unit_scale(ch) for ch in channels])
    names = [_channel_lead(ch) for ch in channels]
    signal, derived = assemble_leads(
        data.T * scale[:, None], names, fs, path, derive_limb_leads=derive_limb_leads, check=check
    )
    meta = common_meta(ds)
    meta.update(
        {
            "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
            "source_leads": names,
            "derived_leads": derived,
            "multiplex_group": str(group.get("MultiplexGroupLabel", "")),
        }
    )
    return EcgRecord(signal, fs, STANDARD_LEADS, meta)
