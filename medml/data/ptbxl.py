"""PTB-XL in its official PhysioNet layout: layout check, a memory-mapped signal cache, label sets and splits.

PTB-XL (Wagner et al., Scientific Data 2020; PhysioNet, CC BY 4.0) holds 10-s 12-lead ECGs as WFDB records at
100 Hz (``records100/``) and 500 Hz (``records500/``), described by ``ptbxl_database.csv`` (one row per ``ecg_id``,
with ``scp_codes`` and the stratified ``strat_fold``) and ``scp_statements.csv`` (the 71 SCP-ECG statements).
See ``datasets/ptb-xl.md``. This module follows ProtoECGNet's data conventions (spec §1.2, §1.9, §1.11):

* signals at 100 Hz in mV, leads I, II, III, aVR, aVL, aVF, V1-V6, an order-1 0.5 Hz Butterworth high-pass applied
  with zero-phase filtering, no standardisation unless asked (then per lead, fitted on folds 1-8);
* 71-dim multi-hot targets in ``scp_statements.csv`` row order; a code is positive whatever its likelihood;
* folds 1-8 train, 9 validation, 10 test; records without a label are dropped only for the sub/superdiagnostic sets;
* the benchmark's label aggregation (Strodthoff et al. 2020) for diagnostic, subdiagnostic, superdiagnostic, form
  and rhythm. What ProtoECGNet does with the labels (its branch partition, loss weights) is the ``ecg`` pipeline's.

Signals are read once by `prepare_ptbxl` into a float32 ``.npy`` array that training memory-maps, so no epoch ever
parses WFDB again. The cache lives outside the dataset, is keyed by the dataset fingerprint and the preprocessing
settings, and is built in a temporary folder renamed into place at the end, so a killed prepare leaves no half cache.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medml import errors
from medml.errors import ConfigError, DataLayoutError, MedmlError, SignalError
from medml.io.ecg import read_wfdb
from medml.io.types import STANDARD_LEADS
from medml.transforms import apply_transform
from medml.transforms.ecg import Standardize, resample_highpass
from medml.utils.files import cache_root, folder_fingerprint, write_json

__all__ = [
    "LABEL_SETS",
    "PTBXL",
    "PTBXL_LEAD_NAMES",
    "SCP_CODES",
    "SCP_STATEMENTS_CSV",
    "SYNTHETIC_MARKER",
    "ECGDataset",
    "dataset_title",
    "check_ptbxl_layout",
    "find_ptbxl_root",
    "fit_standardizer",
    "label_aggregation",
    "prepare_ptbxl",
    "read_ptbxl_record",
    "scp_statements_frame",
]

PTBXL_LEAD_NAMES = tuple(lead.upper() for lead in STANDARD_LEADS)  # as the headers spell them: AVR, AVL, AVF

# PTB-XL scp_statements.csv (v1.0.3), CC BY 4.0, Wagner et al. 2020: the real 71 rows in the real order.
SCP_STATEMENTS_CSV = """\
,description,diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass,Statement Category,SCP-ECG Statement Description,AHA code,aECG REFID,CDISC Code,DICOM Code
NDT,non-diagnostic T abnormalities,1.0,1.0,,STTC,STTC,other ST-T descriptive statements,non-diagnostic T abnormalities,,,,
NST_,non-specific ST changes,1.0,1.0,,STTC,NST_,Basic roots for coding ST-T changes and abnormalities,non-specific ST changes,145,MDC_ECG_RHY_STHILOST,,
DIG,digitalis-effect,1.0,1.0,,STTC,STTC,other ST-T descriptive statements,suggests digitalis-effect,205,,,
LNGQT,long QT-interval,1.0,1.0,,STTC,STTC,other ST-T descriptive statements,long QT-interval,148,,,
NORM,normal ECG,1.0,,,NORM,NORM,Normal/abnormal,normal ECG,1,,,F-000B7
IMI,inferior myocardial infarction,1.0,,,MI,IMI,Myocardial Infarction,inferior myocardial infarction,161,,,
ASMI,anteroseptal myocardial infarction,1.0,,,MI,AMI,Myocardial Infarction,anteroseptal myocardial infarction,165,,,
LVH,left ventricular hypertrophy,1.0,,,HYP,LVH,Ventricular Hypertrophy,left ventricular hypertrophy,142,,C71076,
LAFB,left anterior fascicular block,1.0,,,CD,LAFB/LPFB,Intraventricular and intra-atrial Conduction disturbances,left anterior fascicular block,101,MDC_ECG_BEAT_BLK_ANT_L_HEMI,C62267,D3-33140
ISC_,non-specific ischemic,1.0,,,STTC,ISC_,Basic roots for coding ST-T changes and abnormalities,ischemic ST-T changes,226,,,
IRBBB,incomplete right bundle branch block,1.0,,,CD,IRBBB,Intraventricular and intra-atrial Conduction disturbances,incomplete right bundle branch block,105,MDC_ECG_BEAT_RBB_BLK_INCOMP,C71048,D3-33112
1AVB,first degree AV block,1.0,,,CD,_AVB,"Sinus node dysfunction, atrial and AV-conduction defects",first degree AV block,,MDC_ECG_RHY_AV_HEART_BLK_DEG_1,C111088,
IVCD,non-specific intraventricular conduction disturbance (block),1.0,,,CD,IVCD,Intraventricular and intra-atrial Conduction disturbances,non-specific intraventricular conduction disturbance,107,MDC_ECG_BEAT_BLK_IVCD,C62271,D3-33000
ISCAL,ischemic in anterolateral leads,1.0,,,STTC,ISCA,ischemic ST-T changes,in anterolateral leads,,,,
CRBBB,complete right bundle branch block,1.0,,,CD,CRBBB,Intraventricular and intra-atrial Conduction disturbances,(complete) right bundle branch block,106,MDC_ECG_BEAT_RBB_BLK_COMP,C62270,D3-33110
CLBBB,complete left bundle branch block,1.0,,,CD,CLBBB,Intraventricular and intra-atrial Conduction disturbances,(complete) left bundle branch block,104,MDC_ECG_BEAT_LBB_BLK_COMP,C62269,D3-33120 or 122752
ILMI,inferolateral myocardial infarction,1.0,,,MI,IMI,Myocardial Infarction,inferolateral myocardial infarction,,,,
LAO/LAE,left atrial overload/enlargement,1.0,,,HYP,LAO/LAE,Atrial statements,left atrial overload/enlargement,140,,,
AMI,anterior myocardial infarction,1.0,,,MI,AMI,Myocardial Infarction,anterior myocardial infarction,160,,,
ALMI,anterolateral myocardial infarction,1.0,,,MI,AMI,Myocardial Infarction,anterolateral myocardial infarction,,,,
ISCIN,ischemic in inferior leads,1.0,,,STTC,ISCI,ischemic ST-T changes,in inferior leads,,,,
INJAS,subendocardial injury in anteroseptal leads,1.0,,,MI,AMI,ischemic ST-T changes compatible with subendocardial injury,in anteroseptal leads,,,,
LMI,lateral myocardial infarction,1.0,,,MI,LMI,Myocardial Infarction,lateral myocardial infarction,163,,,
ISCIL,ischemic in inferolateral leads,1.0,,,STTC,ISCI,ischemic ST-T changes,in inferolateral leads,,,,
LPFB,left posterior fascicular block,1.0,,,CD,LAFB/LPFB,Intraventricular and intra-atrial Conduction disturbances,left posterior fascicular block,102,MDC_ECG_BEAT_BLK_POS_L_HEMI,C62268,D3-33150
ISCAS,ischemic in anteroseptal leads,1.0,,,STTC,ISCA,ischemic ST-T changes,in anteroseptal leads,,,,
INJAL,subendocardial injury in anterolateral leads,1.0,,,MI,AMI,ischemic ST-T changes compatible with subendocardial injury,in anterolateral leads,,,,
ISCLA,ischemic in lateral leads,1.0,,,STTC,ISCA,ischemic ST-T changes,in lateral leads,,,,
RVH,right ventricular hypertrophy,1.0,,,HYP,RVH,Ventricular Hypertrophy,right ventricular hypertrophy,143,,C71077,
ANEUR,ST-T changes compatible with ventricular aneurysm,1.0,,,STTC,STTC,other ST-T descriptive statements,ST-T changes compatible with ventricular aneurysm,227,,,
RAO/RAE,right atrial overload/enlargement,1.0,,,HYP,RAO/RAE,Atrial statements,right atrial overload/enlargement,141,,,
EL,electrolytic disturbance or drug (former EDIS),1.0,,,STTC,STTC,physiopathological nature of ST-T changes,compatible with electrolyte abnormalities,,,,
WPW,Wolf-Parkinson-White syndrome,1.0,,,CD,WPW,Intraventricular and intra-atrial Conduction disturbances,Wolff-Parkinson-White syndrome,,MDC_ECG_RHY_WPW_UNK,C35132,
ILBBB,incomplete left bundle branch block,1.0,,,CD,ILBBB,Intraventricular and intra-atrial Conduction disturbances,incomplete left bundle branch block,,MDC_ECG_BEAT_LBB_BLK_INCOMP,C71047,
IPLMI,inferoposterolateral myocardial infarction,1.0,,,MI,IMI,Myocardial Infarction,inferoposterolateral myocardial infarction,,,,
ISCAN,ischemic in anterior leads,1.0,,,STTC,ISCA,ischemic ST-T changes,in anterior leads,,,,
IPMI,inferoposterior myocardial infarction,1.0,,,MI,IMI,Myocardial Infarction,inferoposterior myocardial infarction,,,,
SEHYP,septal hypertrophy,1.0,,,HYP,SEHYP,Ventricular Hypertrophy,septal hypertrophy,,,,
INJIN,subendocardial injury in inferior leads,1.0,,,MI,IMI,ischemic ST-T changes compatible with subendocardial injury,in inferior leads,,,,
INJLA,subendocardial injury in lateral leads,1.0,,,MI,AMI,ischemic ST-T changes compatible with subendocardial injury,in lateral leads,,,,
PMI,posterior myocardial infarction,1.0,,,MI,PMI,Myocardial Infarction,posterior myocardial infarction,162,,,
3AVB,third degree AV block,1.0,,,CD,_AVB,"Sinus node dysfunction, atrial and AV-conduction defects",third degree AV block,88,MDC_ECG_RHY_AV_HEART_BLK_DEG_3,C111091,D3-32102
INJIL,subendocardial injury in inferolateral leads,1.0,,,MI,IMI,ischemic ST-T changes compatible with subendocardial injury,in inferolateral leads,,,,
2AVB,second degree AV block,1.0,,,CD,_AVB,"Sinus node dysfunction, atrial and AV-conduction defects",second degree AV block,,MDC_ECG_RHY_AV_HEART_BLK_DEG_2,C62016,R-F81AE
ABQRS,abnormal QRS,,1.0,,,,Normal/abnormal,abnormal QRS,,,,
PVC,ventricular premature complex,,1.0,,,,Statements related to ectopic rhythm abnormalities,ventricular premature complex (beat),60,MDC_ECG_BEAT_V_P_C,,
STD_,non-specific ST depression,,1.0,,,,Basic roots for coding ST-T changes and abnormalities,non-specific ST depression,502,,,F-38278
VCLVH,voltage criteria (QRS) for left ventricular hypertrophy,,1.0,,,,Ventricular Hypertrophy,voltage criteria (QRS) for left ventricular hypertrophy,,,,
QWAVE,Q waves present,,1.0,,,,Other QRS morphology descriptive statements,Q waves present,,,,
LOWT,low amplitude T-waves,,1.0,,,,other ST-T descriptive statements,low amplitude T-waves,366,,,
NT_,non-specific T-wave changes,,1.0,,,,Basic roots for coding ST-T changes and abnormalities,non-specific T-wave changes,,,,
PAC,atrial premature complex,,1.0,,,,Statements related to ectopic rhythm abnormalities,atrial premature complex (beat),30,MDC_ECG_BEAT_ATR_P_C,,
LPR,prolonged PR interval,,1.0,,,,Statements related to impulse formation (abnormalities),Prolonged PR interval,82,,,
INVT,inverted T-waves,,1.0,,,,other ST-T descriptive statements,inverted T-waves,367,,,
LVOLT,low QRS voltages in the frontal and horizontal leads,,1.0,,,,Other QRS morphology descriptive statements,low QRS voltages in the frontal and horizontal leads,,,,
HVOLT,high QRS voltage,,1.0,,,,Other QRS morphology descriptive statements,high QRS voltage,,,,
TAB_,T-wave abnormality,,1.0,,,,Basic roots for coding ST-T changes and abnormalities,T-wave abnormality,147,,,
STE_,non-specific ST elevation,,1.0,,,,Basic roots for coding ST-T changes and abnormalities,non-specific ST elevation,501,MDC_ECG_RHY_STELVATION,,F-38277
PRC(S),premature complex(es),,1.0,,,,Statements related to ectopic rhythm abnormalities,premature complex(es),,,,
SR,sinus rhythm,,,1.0,,,Statements related to impulse formation (abnormalities),sinus rhythm,20,MDC_ECG_RHY_SINUS_RHY,,
AFIB,atrial fibrillation,,,1.0,,,Statements related to impulse formation (abnormalities),atrial fibrillation,50,MDC_ECG_RHY_ATR_FIB,,D3-31520
STACH,sinus tachycardia,,,1.0,,,Statements related to impulse formation (abnormalities),sinus tachycardia,21,MDC_ECG_RHY_SINUS_TACHY,,
SARRH,sinus arrhythmia,,,1.0,,,Statements related to impulse formation (abnormalities),sinus arrhythmia,23,MDC_ECG_RHY_SINUS_ARRHY,,
SBRAD,sinus bradycardia,,,1.0,,,Statements related to impulse formation (abnormalities),sinus bradycardia,22,MDC_ECG_RHY_SINUS_BRADY,,
PACE,normal functioning artificial pacemaker,,,1.0,,,Pacemaker types and pacemaker function,normal functioning artificial pacemaker,,,,
SVARR,supraventricular arrhythmia,,,1.0,,,Statements related to impulse formation (abnormalities),supraventricular arrhythmia,,,,
BIGU,"bigeminal pattern (unknown origin, SV or Ventricular)",,,1.0,,,Statements related to ectopic rhythm abnormalities,"bigeminal pattern (unknown origin, SV or Ventricular)",,,,
AFLT,atrial flutter,,,1.0,,,Statements related to impulse formation (abnormalities),atrial flutter,51,MDC_ECG_RHY_ATR_FLUT,,
SVTAC,supraventricular tachycardia,,,1.0,,,Statements related to impulse formation (abnormalities),supraventricular tachycardia,55,MDC_ECG_RHY_SV_TACHY,,D3-31290
PSVT,paroxysmal supraventricular tachycardia,,,1.0,,,Statements related to impulse formation (abnormalities),paroxysmal supraventricular tachycardia,,MDC_ECG_RHY_SV_TACHY_PAROX,,
TRIGU,"trigeminal pattern (unknown origin, SV or Ventricular)",,,1.0,,,Statements related to ectopic rhythm abnormalities,"trigeminal pattern (unknown origin, SV or Ventricular)",,,,
"""  # noqa: E501


def scp_statements_frame() -> pd.DataFrame:
    """The 71 SCP statements as PTB-XL's ``scp_statements.csv`` reads with ``index_col=0``."""
    return pd.read_csv(io.StringIO(SCP_STATEMENTS_CSV), index_col=0)


#: PTB-XL's 71 SCP codes in ``scp_statements.csv`` row order (the order of the 71-label targets).
SCP_CODES: tuple[str, ...] = tuple(line.split(",", 1)[0] for line in SCP_STATEMENTS_CSV.splitlines()[1:])
LABEL_SETS = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")
SPLIT_FOLDS = {"train": (1, 2, 3, 4, 5, 6, 7, 8), "val": (9,), "test": (10,)}

DATABASE_CSV = "ptbxl_database.csv"
STATEMENTS_CSV = "scp_statements.csv"
DATABASE_COLUMNS = ("patient_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr")
STATEMENT_COLUMNS = ("description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass")
SOURCES = {"records100": ("filename_lr", 100), "records500": ("filename_hr", 500)}
CACHE_FORMAT = 1  # bump when the cache's content or layout changes
RECORD_SECONDS = 10


# ----------------------------------------------------------------------------------------------------------------
# Layout


def find_ptbxl_root(root: str | Path) -> Path:
    """The folder holding ``ptbxl_database.csv``: ``root`` itself or its only such subfolder.

    PhysioNet's zip unpacks into ``ptb-xl-a-large-publicly-available-electrocardiography-dataset-1.0.3/`` (or
    ``...-1.0.1/``), so users often point at the folder above it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError("dataset folder not found", root)
    if (root / DATABASE_CSV).is_file():
        return root
    nested = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / DATABASE_CSV).is_file()]
    return nested[0] if len(nested) == 1 else root


def _read_statements(root: Path) -> pd.DataFrame:
    path = root / STATEMENTS_CSV
    if not path.is_file():
        raise DataLayoutError(
            f"missing {STATEMENTS_CSV} (the PTB-XL folder holds {DATABASE_CSV}, {STATEMENTS_CSV} and records100/)", root
        )
    try:
        statements = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataLayoutError(f"not a readable CSV ({str(exc).splitlines()[0]})", path) from None
    missing = [c for c in STATEMENT_COLUMNS if c not in statements.columns]
    if missing:
        raise DataLayoutError(f"missing column(s) {', '.join(repr(c) for c in missing)} in {STATEMENTS_CSV}", path)
    statements.index = statements.index.astype(str)
    unknown = [c for c in statements.index if c not in SCP_CODES]
    absent = [c for c in SCP_CODES if c not in set(statements.index)]
    if unknown or absent or statements.index.duplicated().any():
        what = (
            f"unknown code {unknown[0]!r}"
            if unknown
            else f"code {absent[0]!r} missing"
            if absent
            else "duplicate codes"
        )
        raise DataLayoutError(f"{STATEMENTS_CSV} must list PTB-XL's 71 SCP statements once each ({what})", path)
    return statements


def _read_database(root: Path, statements: pd.DataFrame) -> pd.DataFrame:
    path = root / DATABASE_CSV
    if not path.is_file():
        raise DataLayoutError(
            f"missing {DATABASE_CSV} (the PTB-XL folder holds {DATABASE_CSV}, {STATEMENTS_CSV} and records100/)", root
        )
    try:
        db = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataLayoutError(f"not a readable CSV ({str(exc).splitlines()[0]})", path) from None
    missing = [c for c in ("ecg_id", *DATABASE_COLUMNS) if c not in db.columns]
    if missing:
        raise DataLayoutError(f"missing column(s) {', '.join(repr(c) for c in missing)} in {DATABASE_CSV}", path)
    if db.empty:
        raise DataLayoutError("no records", path)
    ecg_id = pd.to_numeric(db["ecg_id"], errors="coerce")
    if ecg_id.isna().any() or (ecg_id % 1 != 0).any() or ecg_id.duplicated().any():
        raise DataLayoutError("ecg_id must be unique integers", path)
    db["ecg_id"] = ecg_id.astype(np.int64)
    fold = pd.to_numeric(db["strat_fold"], errors="coerce")
    bad = ~fold.isin(range(1, 11))
    if bad.any():
        first = db.loc[bad.idxmax()]
        raise DataLayoutError(
            f"strat_fold must be an integer 1-10; ecg_id {first['ecg_id']} has "
            f"{first['strat_fold']} ({int(bad.sum())} such rows)",
            path,
        )
    db["strat_fold"] = fold.astype(np.int64)
    patient = pd.to_numeric(db["patient_id"], errors="coerce")
    if patient.isna().any():
        first = db.loc[patient.isna().idxmax(), "ecg_id"]
        raise DataLayoutError(f"patient_id missing or not a number for ecg_id {first}", path)
    db["patient_id"] = patient.astype(np.int64)
    known = set(statements.index)
    parsed = []
    for ecg, text in zip(db["ecg_id"], db["scp_codes"], strict=True):
        try:
            codes = ast.literal_eval(text) if isinstance(text, str) else None
        except (ValueError, SyntaxError):
            codes = None
        if not isinstance(codes, dict):
            raise DataLayoutError(f"scp_codes of ecg_id {ecg} is not a dict literal like {{'NORM': 100.0}}", path)
        stray = [c for c in codes if c not in known]
        if stray:
            raise DataLayoutError(f"scp_codes of ecg_id {ecg} names {stray[0]!r}, which {STATEMENTS_CSV} lacks", path)
        parsed.append(codes)
    db["scp_codes"] = parsed
    return db.set_index("ecg_id", drop=False)


def _check_records(root: Path, db: pd.DataFrame, source: str) -> None:
    column, _ = SOURCES[source]
    if not (root / source).is_dir():
        hint = " (sampling_rate 100 reads records100/; pass source='records500' to resample the 500 Hz records)"
        raise DataLayoutError(f"missing {source}/ folder{hint if source == 'records100' else ''}", root)
    missing = []
    for ecg, name in zip(db["ecg_id"], db[column], strict=True):
        if not isinstance(name, str) or not name:
            raise DataLayoutError(f"{column} is empty for ecg_id {ecg}", root / DATABASE_CSV)
        for ext in (".hea", ".dat"):
            if not (root / (name + ext)).is_file():
                missing.append((ecg, name + ext))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        ecg, name = missing[0]
        raise DataLayoutError(f"record file {name} of ecg_id {ecg} is missing{more}", root)


def check_ptbxl_layout(root: str | Path, source: str = "records100") -> None:
    """Check a PTB-XL folder (v1.0.1 or v1.0.3) the way nnU-Net checks a dataset, before anything is cached.

    Raises `DataLayoutError` with a one-line reason and the path for: a missing dataset folder, a missing or
    unreadable ``ptbxl_database.csv`` / ``scp_statements.csv``, missing columns, statements other than PTB-XL's 71,
    duplicate or non-integer ``ecg_id``, ``strat_fold`` outside 1-10, unparsable ``scp_codes`` or codes the statements
    table lacks, a missing ``records100/`` (or ``records500/``) folder, and any listed record whose ``.hea`` or
    ``.dat`` file is missing.

    Args:
        root: the PTB-XL folder (or the folder above PhysioNet's nested one).
        source: which record folder must be complete, "records100" or "records500".
    """
    _load_tables(root, source)


def _load_tables(root: str | Path, source: str) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {', '.join(SOURCES)} (got {source!r})")
    root = find_ptbxl_root(root)
    if not (root / DATABASE_CSV).is_file():  # the main file first: a wrong folder should say so
        raise DataLayoutError(
            f"missing {DATABASE_CSV} (the PTB-XL folder holds {DATABASE_CSV}, {STATEMENTS_CSV} and records100/)", root
        )
    statements = _read_statements(root)
    db = _read_database(root, statements)
    _check_records(root, db, source)
    return root, db, statements


# ----------------------------------------------------------------------------------------------------------------
# Reading one record


def read_ptbxl_record(stem: str | Path) -> tuple[np.ndarray, float]:
    """Read a PTB-XL record (path without extension) as ``(signal, fs)``: (12, T) float64 mV in lead order I..V6.

    medml's one WFDB reader (`medml.io.ecg.read_wfdb`, as for clinical files) with PTB-XL's rules: all 12 leads
    recorded (none derived), NaN samples refused, flat leads kept (a dataset record is not a clinical input).

    Raises:
        CorruptFileError: unreadable header or truncated ``.dat``.
        SignalError: leads missing, units not a voltage, or invalid (NaN) samples.
    """
    stem = Path(stem)
    record = read_wfdb(stem.with_name(stem.name + ".hea"), derive_limb_leads=False, check=False, dtype=np.float64)
    if np.isnan(record.signal).any():
        raise SignalError("invalid (NaN) samples", stem.with_name(stem.name + ".hea"))
    return record.signal, record.fs


# ----------------------------------------------------------------------------------------------------------------
# Cache


def _fill_chunk(args: tuple) -> tuple[int, str, str, str | None] | None:
    """Read, preprocess and store records ``start:start+len(names)`` into the cache array (runs in a worker).

    Workers write straight into the memory-mapped file, so no signal is pickled back. Records of one sampling rate
    and length are filtered as one batch (one ``filtfilt`` call per chunk rather than per record). A medml error
    comes back as (row, class name, reason, path) since exception pickling would drop the path.
    """
    npy, root, names, start, rate, highpass, length = args
    signals, rates = [], []
    for offset, name in enumerate(names):
        try:
            signal, fs = read_ptbxl_record(root / name)
        except MedmlError as err:
            return start + offset, type(err).__name__, err.reason, err.path
        signals.append(signal)
        rates.append(fs)
    out = np.load(npy, mmap_mode="r+")
    preprocess = resample_highpass(rate, highpass)
    for fs in sorted(set(rates)):
        rows = [k for k, f in enumerate(rates) if f == fs]
        for n_samples in sorted({signals[k].shape[-1] for k in rows}):
            same = [k for k in rows if signals[k].shape[-1] == n_samples]
            x = apply_transform(preprocess, {"signal": np.stack([signals[k] for k in same]), "fs": fs})["signal"]
            if x.shape[-1] != length:
                k = same[0]
                return (
                    start + k,
                    "SignalError",
                    f"{n_samples} samples at {fs:g} Hz; PTB-XL records are "
                    f"{RECORD_SECONDS} s ({length} samples at {rate} Hz)",
                    str(root / names[k]),
                )
            for j, k in enumerate(same):
                out[start + k] = x[j]
    out.flush()
    return None


def _cache_name(fingerprint: str, rate: int, source: str, highpass: bool) -> str:
    filt = "hp0.5" if highpass else "raw"
    return f"{fingerprint[:16]}-{rate}hz-{source}-{filt}"


def _remove_stale_parts(parent: Path, name: str) -> None:
    """Delete half-built caches of this key left by processes that no longer run (killed prepares)."""
    for part in parent.glob(f".{name}.part-*"):
        pid = part.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(part, ignore_errors=True)
        except PermissionError:
            pass


def prepare_ptbxl(
    root: str | Path,
    cache_dir: str | Path | None = None,
    sampling_rate: int = 100,
    highpass: bool = True,
    workers: int | None = None,
    progress: bool = True,
    source: str | None = None,
) -> Path:
    """Check the layout, then read every record once into a memory-mapped cache; reuse it when complete.

    The cache folder ``<cache_dir>/<fingerprint[:16]>-<rate>hz-<source>-<filter>`` (``cache_dir`` defaults to
    ``cache_root()/"ptbxl"``) holds ``signals.npy`` (float32, (N, 12, T), mV), ``index.npz`` (``ecg_id``,
    ``patient_id``, ``strat_fold``, ``labels`` (N, 71) uint8 in statement order), a copy of the statements table and
    ``meta.json``. It is built under a temporary name and renamed when complete.

    Args:
        root: PTB-XL folder.
        cache_dir: parent folder of the caches (must lie outside the dataset).
        sampling_rate: rate of the cached signals in Hz (100 in ProtoECGNet).
        highpass: apply the order-1 0.5 Hz zero-phase high-pass.
        workers: processes reading records; default one per usable CPU (at most 8); 1 reads in this process.
        progress: show a progress bar while building.
        source: "records100" or "records500"; default records100 at 100 Hz, else records500 (resampled to
            ``sampling_rate`` when they differ).

    Returns:
        The cache folder.
    """
    if sampling_rate <= 0:
        raise ConfigError(f"sampling_rate must be positive (got {sampling_rate})")
    source = source or ("records100" if sampling_rate == 100 else "records500")
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {', '.join(SOURCES)} (got {source!r})")
    root = find_ptbxl_root(root)
    parent = Path(cache_dir) if cache_dir is not None else cache_root() / "ptbxl"
    if parent.resolve().is_relative_to(root.resolve()):
        raise ConfigError("the PTB-XL cache must lie outside the dataset folder (inputs are never written to)", parent)
    # Listing (names and sizes) of the CSVs and the record folder: cheap, and changes with any edit that matters.
    fingerprint = folder_fingerprint(root, (DATABASE_CSV, STATEMENTS_CSV, f"{source}/*/*"))
    name = _cache_name(fingerprint, sampling_rate, source, highpass)
    final = parent / name
    if (final / "meta.json").is_file():
        return final

    root, db, statements = _load_tables(root, source)
    column, _ = SOURCES[source]
    names = db[column].tolist()
    n = len(names)
    length = int(round(RECORD_SECONDS * sampling_rate))
    codes = statements.index.tolist()
    col = {c: j for j, c in enumerate(codes)}
    labels = np.zeros((n, len(codes)), dtype=np.uint8)
    for i, record_codes in enumerate(db["scp_codes"]):
        labels[i, [col[c] for c in record_codes]] = 1

    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(parent, name)
    part = parent / f".{name}.part-{os.getpid()}"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir()
    try:
        npy = part / "signals.npy"
        np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, 12, length)).flush()
        started = time.perf_counter()
        _fill(npy, root, names, sampling_rate, highpass, length, workers, progress)
        seconds = time.perf_counter() - started
        np.savez(
            part / "index.npz",
            ecg_id=db["ecg_id"].to_numpy(np.int64),
            patient_id=db["patient_id"].to_numpy(np.int64),
            strat_fold=db["strat_fold"].to_numpy(np.int64),
            labels=labels,
            filenames=np.array(names),
        )
        statements.to_csv(part / STATEMENTS_CSV)
        write_json(
            part / "meta.json",
            {  # written last: its presence marks a complete cache
                "format": CACHE_FORMAT,
                "root": str(root),
                "fingerprint": fingerprint,
                "source": source,
                "sampling_rate": sampling_rate,
                "highpass": {"enabled": highpass, "cutoff_hz": 0.5, "order": 1, "zero_phase": True},
                "n_records": n,
                "samples": length,
                "leads": list(STANDARD_LEADS),
                "units": "mV",
                "codes": codes,
                "seconds_to_build": round(seconds, 3),
            },
        )
        try:
            part.rename(final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent prepare that finished first
                shutil.rmtree(final, ignore_errors=True)
                part.rename(final)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return final


def _fill(
    npy: Path, root: Path, names: list[str], rate: int, highpass: bool, length: int, workers: int | None, progress: bool
) -> None:
    n = len(names)
    workers = min(8, _usable_cpus()) if workers is None else max(1, int(workers))
    chunk = max(32, min(512, -(-n // (workers * 8))))  # several chunks per worker to balance, few enough to be cheap
    jobs = [(npy, root, names[s : s + chunk], s, rate, highpass, length) for s in range(0, n, chunk)]
    bar = _progress_bar(n, progress)
    try:
        if workers == 1 or len(jobs) == 1:
            results = (_fill_chunk(job) for job in jobs)
            for job, result in zip(jobs, results, strict=True):
                _raise_worker_error(result)
                bar.update(len(job[2]))
        else:
            with ProcessPoolExecutor(workers) as pool:
                for job, result in zip(jobs, pool.map(_fill_chunk, jobs), strict=True):
                    _raise_worker_error(result)
                    bar.update(len(job[2]))
    finally:
        bar.close()


def _usable_cpus() -> int:
    """CPUs this process may run on (respects affinity masks set by SLURM, taskset or containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _raise_worker_error(result: tuple[int, str, str, str | None] | None) -> None:
    if result is not None:
        _, cls_name, reason, path = result
        raise getattr(errors, cls_name, MedmlError)(reason, path)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="PTB-XL cache", unit="rec")


# ----------------------------------------------------------------------------------------------------------------
# Labels


def label_aggregation(statements: pd.DataFrame, label_set: str) -> tuple[list[str], np.ndarray]:
    """How a label set's columns are made from the 71 statements: (names, A (71, K) uint8), Y_set = (Y_all @ A > 0).

    ``all`` keeps statements in row order; the benchmark sets follow Strodthoff et al.:
    ``diagnostic``/``form``/``rhythm`` are the statements with that flag, ``subdiagnostic``/``superdiagnostic`` the
    ``diagnostic_subclass``/``diagnostic_class`` of the diagnostic statements, in sorted order (the benchmark's
    ``MultiLabelBinarizer`` order). A set's score for a record can be taken as the maximum over its member columns.
    """
    codes = statements.index.tolist()
    if label_set == "all":
        return codes, np.eye(len(codes), dtype=np.uint8)
    if label_set in ("diagnostic", "form", "rhythm"):
        member = {c: c for c in codes if statements.at[c, label_set] == 1}
    elif label_set in ("subdiagnostic", "superdiagnostic"):
        column = "diagnostic_subclass" if label_set == "subdiagnostic" else "diagnostic_class"
        member = {
            c: str(statements.at[c, column])
            for c in codes
            if statements.at[c, "diagnostic"] == 1 and pd.notna(statements.at[c, column])
        }
    else:
        raise ConfigError(f"label set must be one of {', '.join(LABEL_SETS)} (got {label_set!r})")
    names = sorted(set(member.values()))
    aggregation = np.zeros((len(codes), len(names)), dtype=np.uint8)
    for j, code in enumerate(codes):
        if code in member:
            aggregation[j, names.index(member[code])] = 1
    return names, aggregation


# ----------------------------------------------------------------------------------------------------------------
# Dataset


class PTBXL:
    """A prepared PTB-XL: memory-mapped signals, ids, folds and the 71-label targets.

    ``PTBXL(root)`` checks the layout and builds the cache on first use (see `prepare_ptbxl`); later opens only map
    the cache. Attributes: ``signals`` (N, 12, T) float32 mV memmap, ``ecg_ids``, ``patient_ids``, ``folds`` (N,)
    int64, ``codes`` (71 statements in ``scp_statements.csv`` order), ``labels`` (N, 71) uint8, ``statements``
    (the statements table), ``sampling_rate``, ``cache_path``.
    """

    def __init__(
        self,
        root: str | Path,
        sampling_rate: int = 100,
        cache_dir: str | Path | None = None,
        highpass: bool = True,
        source: str | None = None,
        workers: int | None = None,
        progress: bool = False,
    ) -> None:
        self.root = find_ptbxl_root(root)
        self.sampling_rate = int(sampling_rate)
        self.cache_path = prepare_ptbxl(self.root, cache_dir, sampling_rate, highpass, workers, progress, source)
        self.meta = json.loads((self.cache_path / "meta.json").read_text())
        with np.load(self.cache_path / "index.npz") as index:
            self.ecg_ids = index["ecg_id"]
            self.patient_ids = index["patient_id"]
            self.folds = index["strat_fold"]
            self.labels = index["labels"]
            self._filenames = index["filenames"].tolist()
        self.statements = pd.read_csv(self.cache_path / STATEMENTS_CSV, index_col=0)
        self.statements.index = self.statements.index.astype(str)
        self.codes: list[str] = list(self.meta["codes"])
        self._signals: np.memmap | None = None

    @property
    def signals(self) -> np.memmap:
        if self._signals is None:  # opened lazily so DataLoader workers map the file instead of copying an array
            self._signals = np.load(self.cache_path / "signals.npy", mmap_mode="r")
        return self._signals

    def __len__(self) -> int:
        return len(self.ecg_ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_signals"] = None  # pickling a memmap would copy the whole array into every worker
        return state

    def label_aggregation(self, label_set: str) -> tuple[list[str], np.ndarray]:
        """See `label_aggregation`: (names, A (71, K)) for ``label_set``."""
        return label_aggregation(self.statements, label_set)

    def label_matrix(self, label_set: str = "all") -> tuple[list[str], np.ndarray]:
        """(label names, Y (N, K) uint8) of a label set for every record."""
        names, aggregation = self.label_aggregation(label_set)
        y = (self.labels.astype(np.int32) @ aggregation.astype(np.int32)) > 0
        return names, y.astype(np.uint8)

    def split_indices(self, split: str, label_set: str | None = None) -> np.ndarray:
        """Row indices of a split (train: folds 1-8, val: 9, test: 10).

        With ``label_set`` "subdiagnostic" or "superdiagnostic", records with no positive label in that set are
        dropped (ProtoECGNet, spec §1.9); for every other set all records are kept.
        """
        if split not in SPLIT_FOLDS:
            raise ConfigError(f"split must be one of {', '.join(SPLIT_FOLDS)} (got {split!r})")
        keep = np.isin(self.folds, SPLIT_FOLDS[split])
        if label_set is not None:
            _, y = self.label_matrix(label_set)
            if label_set in ("subdiagnostic", "superdiagnostic"):
                keep &= y.any(axis=1)
        return np.flatnonzero(keep)

    def record_path(self, i: int) -> Path:
        """The WFDB record (path without extension, as ``wfdb.rdsamp`` takes it) of row ``i``."""
        return self.root / self._filenames[int(i)]

    @property
    def title(self) -> str:
        """What the data is, for titles and model cards: never "PTB-XL" for medml's synthetic stand-in."""
        return dataset_title(self.root)


#: File `medml.data.synthetic_ptbxl` writes beside the tables, so results on simulated ECGs are never titled PTB-XL.
SYNTHETIC_MARKER = "MEDML_SYNTHETIC.txt"


def dataset_title(root: str | Path) -> str:
    """``"synthetic PTB-XL layout (simulated ECGs)"`` for a folder medml's generator wrote, else ``"PTB-XL"``."""
    return "synthetic PTB-XL layout (simulated ECGs)" if (Path(root) / SYNTHETIC_MARKER).is_file() else "PTB-XL"


def fit_standardizer(
    signals: np.ndarray, indices: Sequence[int] | np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per-lead mean and standard deviation over the given records (pass the training folds only), float32 (12,)."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if indices.size == 0:
        raise ValueError("no records to fit the standardiser on")
    total = np.zeros(signals.shape[1])
    total_sq = np.zeros(signals.shape[1])
    count = 0
    for s in range(0, indices.size, chunk):  # chunks keep memory flat on the full 21k-record memmap
        x = np.asarray(signals[indices[s : s + chunk]], dtype=np.float64)
        total += x.sum(axis=(0, 2))
        total_sq += np.square(x).sum(axis=(0, 2))
        count += x.shape[0] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


class ECGDataset(Dataset):
    """Records of a `PTBXL` as tensors: ``{"signal": (12, T) float32, "target": (K,) float32, "ecg_id", "index"}``.

    Args:
        ptbxl: the prepared dataset.
        indices: row indices (e.g. ``ptbxl.split_indices("train")``).
        label_set: one of `LABEL_SETS`; ``target`` has that set's K columns (``label_names``).
        mean, std: per-lead statistics from `fit_standardizer` (training folds); None keeps the signal in mV.
        transform: optional callable applied to the (12, T) float32 array after standardisation.
    """

    def __init__(
        self,
        ptbxl: PTBXL,
        indices: Sequence[int] | np.ndarray,
        label_set: str = "all",
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        transform=None,
    ) -> None:
        self.ptbxl = ptbxl
        self.indices = np.asarray(indices, dtype=np.int64)
        self.label_set = label_set
        self.label_names, y = ptbxl.label_matrix(label_set)
        self.targets = y[self.indices].astype(np.float32)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.standardize = Standardize(mean, std) if mean is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        i = int(self.indices[k])
        signal = np.array(self.ptbxl.signals[i], dtype=np.float32)  # copy out of the read-only map
        if self.standardize is not None:
            signal = self.standardize(signal)
        if self.transform is not None:
            signal = self.transform(signal)
        return {
            "signal": torch.as_tensor(signal),
            "target": torch.from_numpy(self.targets[k]),
            "ecg_id": int(self.ptbxl.ecg_ids[i]),
            "index": i,
        }
