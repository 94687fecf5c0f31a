"""A synthetic PTB-XL in the official layout, with ECGs whose shape follows their SCP labels.

The layout is that of PhysioNet's PTB-XL (Wagner et al., 2020; CC BY 4.0): ``ptbxl_database.csv`` with every
official column, ``scp_statements.csv`` with the real 71 statements (rows, order and columns are
``medml.data.ptbxl.SCP_STATEMENTS_CSV``, facts from the public release), and WFDB records
``records100/00000/00001_lr.{hea,dat}`` (and optionally ``records500/.../00001_hr``) in format 16 at 1 µV resolution
with PTB-XL's lead names.

Signals come from neurokit2's 12-lead ECGSYN model (``ecg_simulate(method="multileads")``). Simulating every
10-s record costs about 0.4 s, so instead one noise-free beat template is simulated per (heart-rate band,
QRS width) and each record is built by placing perturbed copies of it at label-dependent R-R intervals, editing the
beat for its labels, then adding noise and baseline wander. Learnable labels and what makes them visible:

=====  ==========================================================================================
SR     regular rhythm 60-95 bpm with P waves
STACH  regular 105-140 bpm
SBRAD  regular 40-55 bpm
AFIB   irregular R-R (±40 %), no P wave, 4-7 Hz fibrillatory waves
NORM   sinus/brady/tachy rhythm with no morphology abnormality
LVH    QRS voltage ×2.5 in V1-V6 (deep S V1-V2, tall R V5-V6) and ×1.6 in I, aVL
IMI    pathological Q waves and inverted T in II, III, aVF
ISC_   inverted T waves in I, aVL, V2-V6
STD_   0.2 mV horizontal ST depression in I, II, aVL, V4-V6
STE_   0.3 mV ST elevation in V1-V4
CLBBB  wide QRS, QS in V1-V3, discordant T in I, aVL, V5, V6
CRBBB  wide QRS, R' in V1-V2, broad S in I, aVL, V5, V6
=====  ==========================================================================================

Label shares are PTB-XL-like (NORM ~40 %, SR ~70 %); the other 59 statements never occur. Folds 1-10 are assigned
patient-wise and stratified on the labels (records grouped by their rarest code), so every learnable code has
positives in the validation and test folds; about 8 % of patients have two records (in the same fold).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import resample_poly

# The statement table is a PTB-XL fact that production code needs too, so it lives in the adapter.
from medml.data.ptbxl import PTBXL_LEAD_NAMES, SCP_STATEMENTS_CSV, SYNTHETIC_MARKER, scp_statements_frame

__all__ = ["LEARNABLE_CODES", "SCP_STATEMENTS_CSV", "scp_statements_frame", "simulate_ecg", "write_synthetic_ptbxl"]


SIM_FS = 500  # simulate at PTB-XL's 500 Hz; the 100 Hz records are decimated from it, as in PTB-XL
DURATION_S = 10
MV_PER_ADC = 0.001  # format 16 with gain 1000/mV: 1 µV resolution, as PTB-XL

# rhythm: (template heart rate, heart-rate range in bpm)
_RHYTHMS = {
    "SR": (72, (60.0, 95.0)),
    "STACH": (120, (105.0, 140.0)),
    "SBRAD": (48, (40.0, 55.0)),
    "AFIB": (90, (70.0, 120.0)),
}
_RHYTHM_SHARE = {"SR": 0.70, "STACH": 0.10, "SBRAD": 0.10, "AFIB": 0.10}
_MORPHOLOGY_SHARE = {
    "": 0.44,
    "LVH": 0.12,
    "IMI": 0.10,
    "ISC_": 0.08,
    "STD_": 0.07,
    "STE_": 0.06,
    "CLBBB": 0.065,
    "CRBBB": 0.065,
}
# A first morphology label often comes with a second (probability), which makes the co-occurrence matrix non-trivial.
_COMPANION = {
    "LVH": ("STD_", 0.3),
    "IMI": ("ISC_", 0.3),
    "ISC_": ("STD_", 0.4),
    "CLBBB": ("LVH", 0.2),
    "CRBBB": ("IMI", 0.15),
}
LEARNABLE_CODES = ("NORM", "SR", "STACH", "SBRAD", "AFIB", "LVH", "IMI", "ISC_", "STD_", "STE_", "CLBBB", "CRBBB")

_L = {name: i for i, name in enumerate(("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"))}
_LEAD_GAIN = np.array([0.8, 1.0, 0.6, 0.8, 0.5, 0.7, 0.9, 1.2, 1.3, 1.3, 1.1, 0.9])[:, None]
_NARROW_BI = (0.25, 0.1, 0.1, 0.1, 0.4)  # ECGSYN Gaussian widths of P, Q, R, S, T (neurokit2's defaults)
_WIDE_BI = (0.25, 0.22, 0.22, 0.22, 0.4)  # bundle-branch blocks: QRS about twice as wide


def _smooth_box(t: np.ndarray, start: float, stop: float, ramp: float) -> np.ndarray:
    """1 on [start, stop], 0 outside, with raised-cosine edges of width ``ramp`` (no steps for the CNN to find)."""
    up = np.clip((t - start + ramp) / ramp, 0, 1)
    down = np.clip((stop + ramp - t) / ramp, 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * up)) * (0.5 - 0.5 * np.cos(np.pi * down))


def _gauss(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


@cache
def _beat_template(heart_rate: int, wide_qrs: bool) -> tuple[np.ndarray, int]:
    """One noise-free 12-lead beat from neurokit2 at ``SIM_FS``: (template (12, L) in mV, index of the R peak)."""
    import neurokit2 as nk

    rr = SIM_FS * 60.0 / heart_rate
    ecg = nk.ecg_simulate(
        duration=3 * 60.0 / heart_rate,
        sampling_rate=SIM_FS,
        heart_rate=heart_rate,
        heart_rate_std=0,
        noise=0,
        method="multileads",
        random_state=0,
        bi=_WIDE_BI if wide_qrs else _NARROW_BI,
    )
    x = ecg.to_numpy().T.astype(np.float64)
    # Beats are evenly spaced; lead I has the dominant R, so its maximum near 2 R-R finds the third beat's R peak.
    lo = int(2 * rr - rr / 3)
    r_peak = lo + int(np.argmax(x[0, lo : int(2 * rr + rr / 3)]))
    before, after = int(round(0.4 * rr)), int(round(0.6 * rr))
    beat = x[:, r_peak - before : r_peak + after].copy()
    edge = max(2, int(0.05 * rr))
    beat -= np.median(np.concatenate([beat[:, :edge], beat[:, -edge:]], axis=1), axis=1, keepdims=True)
    t = np.arange(beat.shape[1]) - before
    beat *= _smooth_box(t.astype(float), -before + edge, after - edge, edge)  # taper so overlapping beats add smoothly
    return beat * _LEAD_GAIN, before


def _edit_beat(beat: np.ndarray, r: int, labels: frozenset[str], rr0: float, wide: bool) -> np.ndarray:
    """Apply each label's morphology to a beat template (times in seconds relative to the R peak)."""
    t = (np.arange(beat.shape[1]) - r) / SIM_FS
    qrs = 0.09 if wide else 0.05
    w_qrs = _smooth_box(t, -qrs, qrs, 0.015)
    w_p = _smooth_box(t, -rr0, -qrs - 0.03, 0.02)
    w_st = _smooth_box(t, qrs + 0.02, 0.22 * np.sqrt(rr0 / 0.83), 0.05)
    w_t = _smooth_box(t, qrs + 0.06, rr0, 0.05)
    beat = beat.copy()
    v = slice(_L["V1"], _L["V6"] + 1)
    if "LVH" in labels:
        beat[v] *= 1 + 1.5 * w_qrs
        beat[[_L["I"], _L["aVL"]]] *= 1 + 0.6 * w_qrs
    if "IMI" in labels:
        inferior = [_L["II"], _L["III"], _L["aVF"]]
        beat[inferior] += -0.5 * _gauss(t, -qrs + 0.015, 0.014)
        beat[inferior] *= 1 - 1.6 * w_t
    if "ISC_" in labels:
        beat[[_L["I"], _L["aVL"], _L["V2"], _L["V3"], _L["V4"], _L["V5"], _L["V6"]]] *= 1 - 1.9 * w_t
    if "STD_" in labels:
        beat[[_L["I"], _L["II"], _L["aVL"], _L["V4"], _L["V5"], _L["V6"]]] += -0.2 * w_st
        beat[_L["aVR"]] += 0.1 * w_st
    if "STE_" in labels:
        beat[_L["V1"] : _L["V4"] + 1] += 0.3 * w_st
    if "CLBBB" in labels:
        beat[_L["V1"] : _L["V3"] + 1] *= 1 - 2.3 * w_qrs
        beat[[_L["I"], _L["aVL"], _L["V5"], _L["V6"]]] *= 1 - 2.0 * w_t
    if "CRBBB" in labels:
        beat[[_L["V1"], _L["V2"]]] += 0.7 * _gauss(t, qrs - 0.02, 0.015)
        beat[[_L["I"], _L["aVL"], _L["V5"], _L["V6"]]] += -0.4 * _gauss(t, qrs - 0.01, 0.02)
    if "AFIB" in labels:
        beat *= 1 - w_p
    return beat


def simulate_ecg(labels: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """A 10-s 12-lead ECG at 500 Hz in mV, shape (12, 5000), whose rhythm and morphology follow ``labels``.

    Args:
        labels: SCP codes; those in `LEARNABLE_CODES` shape the signal (rhythm from AFIB/STACH/SBRAD, else sinus),
            any other code is ignored.
        rng: source of the record's heart rate, beat timing, amplitudes, noise and baseline wander.
    """
    labels = frozenset(labels)
    rhythm = next((r for r in ("AFIB", "STACH", "SBRAD") if r in labels), "SR")
    hr0, (hr_lo, hr_hi) = _RHYTHMS[rhythm]
    wide = bool(labels & {"CLBBB", "CRBBB"})
    template, r = _beat_template(hr0, wide)
    rr0 = 60.0 / hr0
    beat = _edit_beat(template, r, labels, rr0, wide)
    beat *= rng.uniform(0.85, 1.15, size=(12, 1)) * rng.uniform(0.8, 1.2)

    n = SIM_FS * DURATION_S
    length = beat.shape[1]
    pad = length + 2 * SIM_FS  # beats overlapping either end need no clipping
    out = np.zeros((12, n + 2 * pad))
    rr_mean = 60.0 / rng.uniform(hr_lo, hr_hi)
    pos = rng.uniform(0, rr_mean)
    while pos < DURATION_S + rr_mean:
        start = int(round(pos * SIM_FS)) - r + pad
        out[:, start : start + length] += beat
        jitter = rng.uniform(0.6, 1.4) if rhythm == "AFIB" else 1 + 0.02 * rng.standard_normal()
        pos += rr_mean * jitter
    x = out[:, pad : pad + n]

    t = np.arange(n) / SIM_FS
    if rhythm == "AFIB":  # fibrillatory waves, strongest in V1 and the inferior leads
        f_gain = np.full((12, 1), 0.4)
        f_gain[[_L["II"], _L["III"], _L["aVF"], _L["V1"]]] = 1.0
        for _ in range(3):
            freq, phase = rng.uniform(4, 7), rng.uniform(0, 2 * np.pi)
            x += f_gain * rng.uniform(0.02, 0.05) * np.sin(2 * np.pi * freq * t + phase)
    for _ in range(2):  # baseline wander (breathing, electrode drift) that the 0.5 Hz high-pass removes
        freq, phase = rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
        x += rng.uniform(0.0, 0.15, size=(12, 1)) * np.sin(2 * np.pi * freq * t + phase)
    x += 0.015 * rng.standard_normal(x.shape)
    return x


def _quota(shares: dict[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` draws whose counts match ``shares`` as closely as rounding allows, in random order."""
    keys = list(shares)
    counts = np.floor(np.array([shares[k] for k in keys]) * n).astype(int)
    remainder = np.array([shares[k] for k in keys]) * n - counts
    counts[np.argsort(-remainder)[: n - counts.sum()]] += 1
    items = [k for k, c in zip(keys, counts, strict=True) for _ in range(c)]
    rng.shuffle(items)
    return items


def _draw_labels(n: int, rng: np.random.Generator) -> list[frozenset[str]]:
    rhythms = _quota(_RHYTHM_SHARE, n, rng)
    morphologies = _quota(_MORPHOLOGY_SHARE, n, rng)
    records = []
    for rhythm, first in zip(rhythms, morphologies, strict=True):
        labels = {rhythm} if first == "" else {rhythm, first}
        if first in _COMPANION and rng.random() < _COMPANION[first][1]:
            labels.add(_COMPANION[first][0])
        if labels & {"STD_"} and labels & {"STE_"}:
            labels.discard("STE_")
        if not labels - {"SR", "STACH", "SBRAD", "AFIB"} and rhythm != "AFIB":
            labels.add("NORM")
        records.append(frozenset(labels))
    return records


def _assign_folds(labels: list[frozenset[str]], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Patient-wise folds 1-10 stratified on the label combination; about 8 % of patients get two records.

    Returns (patient index per record, fold per record).
    """
    frequency: dict[str, int] = {}
    for lab in labels:
        for code in lab:
            frequency[code] = frequency.get(code, 0) + 1
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, lab in enumerate(labels):  # key: the record's codes from rarest to commonest
        groups.setdefault(tuple(sorted(lab, key=lambda c: (frequency[c], c))), []).append(i)
    patients: list[list[int]] = []
    # Sorting by that key keeps every record of a rare code together, so dealing in order spreads it evenly.
    for key in sorted(groups, key=lambda k: [(frequency[c], c) for c in k]):
        members = list(rng.permutation(groups[key]))
        while members:
            take = 2 if len(members) >= 2 and rng.random() < 0.08 else 1
            patients.append([int(m) for m in members[:take]])
            del members[:take]
    # Deal patients to folds in cycles of ten, each cycle in a fresh random fold order, so every fold gets its share
    # of every label combination and no fold is favoured by the remainders.
    folds = np.zeros(len(labels), dtype=int)
    patient_of = np.zeros(len(labels), dtype=int)
    cycle = rng.permutation(10) + 1
    for p, members in enumerate(patients):
        if p % 10 == 0:
            cycle = rng.permutation(10) + 1
        folds[members] = cycle[p % 10]
        patient_of[members] = p
    return patient_of, folds


def _likelihoods(labels: frozenset[str], statements: pd.DataFrame, rng: np.random.Generator) -> dict[str, float]:
    """PTB-XL's ``scp_codes``: diagnostic statements carry a likelihood (mostly 100), form/rhythm ones 0."""
    out = {}
    for code in sorted(labels, key=lambda c: (statements.at[c, "diagnostic"] != 1.0, c)):
        out[code] = float(rng.choice([100.0, 100.0, 80.0, 50.0])) if statements.at[code, "diagnostic"] == 1.0 else 0.0
    return out


def _record_stem(ecg_id: int, suffix: str) -> str:
    return f"{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_{suffix}"


def _write_records(args: tuple[Path, list[tuple[int, tuple[str, ...]]], int, tuple[int, ...]]) -> None:
    """Simulate and write a chunk of records (runs in a worker process)."""
    import wfdb

    root, chunk, seed, rates = args
    for ecg_id, labels in chunk:
        rng = np.random.default_rng([seed, ecg_id])
        x500 = simulate_ecg(labels, rng)
        for rate in rates:
            x = x500 if rate == SIM_FS else resample_poly(x500, rate, SIM_FS, axis=-1)
            x = np.round(x / MV_PER_ADC) * MV_PER_ADC
            folder, suffix = ("records500", "hr") if rate == 500 else ("records100", "lr")
            stem = root / folder / _record_stem(ecg_id, suffix)
            stem.parent.mkdir(parents=True, exist_ok=True)
            wfdb.wrsamp(
                stem.name,
                fs=rate,
                units=["mV"] * 12,
                sig_name=list(PTBXL_LEAD_NAMES),
                p_signal=np.ascontiguousarray(x.T),
                fmt=["16"] * 12,
                adc_gain=[1.0 / MV_PER_ADC] * 12,
                baseline=[0] * 12,
                write_dir=str(stem.parent),
            )


def write_synthetic_ptbxl(
    root: str | Path,
    n_records: int = 400,
    seed: int = 0,
    version: str = "1.0.3",
    rates: Sequence[int] = (100,),
    workers: int | None = None,
) -> Path:
    """Write a PTB-XL-layout dataset of ``n_records`` simulated 10-s 12-lead ECGs into ``root``.

    Args:
        root: output folder (created); it receives ``ptbxl_database.csv``, ``scp_statements.csv``, ``RECORDS``
            (one record path per line) and ``records100/`` (plus ``records500/`` when 500 is in ``rates``).
        n_records: number of ECGs (at least 20, so every fold gets records).
        seed: random seed; the same seed writes the same dataset.
        version: PTB-XL release whose layout to follow, "1.0.1" or "1.0.3". The two releases share file names,
            CSV columns and fold scheme, so both write the same files.
        rates: sampling rates to write, from (100, 500).
        workers: processes for simulation and writing; default: one per CPU from 200 records on, else 1.

    Returns:
        ``root`` as a `Path`.
    """
    if version not in ("1.0.1", "1.0.3"):
        raise ValueError(f"version must be '1.0.1' or '1.0.3' (got {version!r})")
    if not set(rates) <= {100, 500} or not rates:
        raise ValueError(f"rates must be a non-empty subset of (100, 500) (got {rates!r})")
    if n_records < 20:
        raise ValueError(f"n_records must be at least 20 so that every fold gets records (got {n_records})")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    statements = scp_statements_frame()
    labels = _draw_labels(n_records, rng)
    patient_of, folds = _assign_folds(labels, rng)
    patient_ids = rng.choice(np.arange(1, 30000), size=int(patient_of.max()) + 1, replace=False)

    rows = []
    for i, lab in enumerate(labels):
        ecg_id = i + 1
        scp_codes = _likelihoods(lab, statements, rng)
        rows.append(_database_row(ecg_id, float(patient_ids[patient_of[i]]), int(folds[i]), scp_codes, statements, rng))
    database = pd.DataFrame(rows).set_index("ecg_id")
    database.to_csv(root / "ptbxl_database.csv")
    (root / "scp_statements.csv").write_text(SCP_STATEMENTS_CSV)

    jobs = [(i + 1, tuple(sorted(lab))) for i, lab in enumerate(labels)]
    for hr0, _ in _RHYTHMS.values():  # simulate templates once, before any worker process forks
        _beat_template(hr0, False)
        _beat_template(hr0, True)
    rates = tuple(sorted(rates))
    workers = workers if workers is not None else ((os.cpu_count() or 1) if n_records >= 200 else 1)
    chunks = [jobs[k : k + 100] for k in range(0, len(jobs), 100)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_records, [(root, c, seed, rates) for c in chunks]))
    else:
        for c in chunks:
            _write_records((root, c, seed, rates))
    listing = [f"records{r}/{_record_stem(e, 'lr' if r == 100 else 'hr')}" for r in rates for e, _ in jobs]
    (root / "RECORDS").write_text("\n".join(listing) + "\n")
    (root / SYNTHETIC_MARKER).write_text(
        f"Written by medml.data.synthetic_ptbxl (seed {seed}, {n_records} records): simulated ECGs in PTB-XL's layout, "
        "not PTB-XL. Results on this folder are titled 'synthetic'.\n"
    )
    return root


_DEVICES = ("CS-12   E", "AT-6     6", "CS100    3", "AT-60    3")
_AXIS = {"LVH": "LAD", "CLBBB": "LAD", "CRBBB": "RAD"}


def _database_row(
    ecg_id: int,
    patient_id: float,
    fold: int,
    scp_codes: dict[str, float],
    statements: pd.DataFrame,
    rng: np.random.Generator,
) -> dict:
    """One ``ptbxl_database.csv`` row with every official column (demographics and flags are plausible noise)."""
    report = ". ".join(statements.at[c, "description"] for c in scp_codes) + "."
    axis = next((_AXIS[c] for c in scp_codes if c in _AXIS), str(rng.choice(["MID", "MID", "LAD", "ALAD"])))
    stamp = pd.Timestamp("1984-01-01") + pd.Timedelta(seconds=int(rng.integers(0, 17 * 365 * 86400)))
    drift = ", I-AVR," if rng.random() < 0.07 else np.nan
    return {
        "ecg_id": ecg_id,
        "patient_id": patient_id,
        "age": float(rng.integers(18, 90)),
        "sex": int(rng.integers(0, 2)),
        "height": float(rng.integers(150, 195)) if rng.random() < 0.3 else np.nan,
        "weight": float(rng.integers(50, 110)) if rng.random() < 0.4 else np.nan,
        "nurse": float(rng.integers(0, 12)) if rng.random() < 0.9 else np.nan,
        "site": float(rng.integers(0, 50)),
        "device": str(rng.choice(_DEVICES)),
        "recording_date": stamp.strftime("%Y-%m-%d %H:%M:%S"),
        "report": report,
        "scp_codes": repr(scp_codes),
        "heart_axis": axis,
        "infarction_stadium1": "Stadium II" if "IMI" in scp_codes else np.nan,
        "infarction_stadium2": np.nan,
        "validated_by": float(rng.integers(0, 12)) if rng.random() < 0.6 else np.nan,
        "second_opinion": bool(rng.random() < 0.02),
        "initial_autogenerated_report": bool(rng.random() < 0.1),
        "validated_by_human": fold >= 9 or bool(rng.random() < 0.7),
        "baseline_drift": drift,
        "static_noise": ", I-V1," if rng.random() < 0.1 else np.nan,
        "burst_noise": np.nan,
        "electrodes_problems": np.nan,
        "extra_beats": np.nan,
        "pacemaker": np.nan,
        "strat_fold": fold,
        "filename_lr": f"records100/{_record_stem(ecg_id, 'lr')}",
        "filename_hr": f"records500/{_record_stem(ecg_id, 'hr')}",
    }
