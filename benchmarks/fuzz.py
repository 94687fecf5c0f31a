"""Mutation fuzzing of medml's readers: only medml's own errors may come out, and memory stays within a budget.

Usage::

    python benchmarks/fuzz.py [--n 10000] [--seed 0] [--budget-mb 1024] [--save DIR] [--jsonl FILE]

Seeds are real files written by other software: pydicom's test files (CT, MR, US/XA cines, waveform ECGs, SEG,
every compressed transfer syntax), nibabel's test NIfTI files, and a WFDB record, PNG/JPEG images, an MP4 video
and MHA/NRRD volumes written here by wfdb, Pillow, OpenCV and SimpleITK. Hypothesis draws each mutant: a seed, a
file of it, and one to three mutations (byte flips, truncation, inserted or deleted bytes, a header value set to a
hostile one: DICOM elements by keyword, NIfTI-1 header fields, PNG IHDR sizes, WFDB header fields, MP4 box sizes,
numbers in text headers, and deeply nested DICOM sequences). Each mutant is written to its own folder and run
through ``medml.io.inspect`` (``discover`` + ``read_case``, the reader for the case's kind, + ``describe``).

Outcomes: ``ok`` (read), ``refused`` (a medml error with its reason), ``crash`` (any other exception, from a
reader or escaping inspect), ``memory`` (peak resident memory above ``--budget-mb`` over the warm baseline, or a
MemoryError; the address space is also capped so a runaway allocation fails instead of exhausting the machine),
``slow`` (over ``--timeout`` seconds), ``died`` (the worker process was killed, e.g. by a native crash; the run
restarts after that input). Crashes are saved to ``--save`` with the traceback, and grouped by signature (exception
type and the innermost medml frame).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.memory import peak_mb, reset_peak, rss_mb  # noqa: E402

OUTCOMES = ("ok", "refused", "crash", "memory", "slow", "died")
BAD = ("crash", "memory", "slow", "died")


@dataclass(frozen=True)
class Seed:
    name: str
    kind: str  # dicom, nifti, nifti_gz, png, jpeg, wfdb, mp4, mha, nrrd
    files: tuple[tuple[str, bytes], ...]


# ----- seeds -------------------------------------------------------------------------------------------------------
def build_seeds(max_bytes: int = 256_000) -> list[Seed]:
    """Every seed, in a fixed order (pydicom's and nibabel's test data, then files written here)."""
    import nibabel
    from pydicom.data import get_testdata_files

    seeds = []
    for path in sorted(get_testdata_files()):
        p = Path(path)
        not_dicom = p.suffix.lower() in (".json", ".txt", ".py", ".gz", ".bz2", ".zip", ".icc", ".dump")
        if p.is_file() and 132 < p.stat().st_size <= max_bytes and not not_dicom:
            seeds.append(Seed(f"pydicom/{p.name}", "dicom", ((_safe(p.name), p.read_bytes()),)))
    data = Path(nibabel.__file__).parent / "tests" / "data"
    for p in sorted(data.iterdir()):
        if p.name.endswith((".nii", ".nii.gz")) and p.stat().st_size <= max_bytes:
            kind = "nifti_gz" if p.name.endswith(".gz") else "nifti"
            seeds.append(Seed(f"nibabel/{p.name}", kind, ((p.name, p.read_bytes()),)))
    seeds.extend(_written_seeds())
    return seeds


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _written_seeds() -> list[Seed]:
    import cv2
    import numpy as np
    import SimpleITK as sitk
    import wfdb
    from PIL import Image

    rng = np.random.default_rng(0)
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = np.arange(1000) / 500
        signal_ = np.stack([0.5 * np.sin(2 * np.pi * (1 + 0.2 * k) * t) for k in range(12)], axis=1)
        leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
        wfdb.wrsamp(
            "00001_hr", fs=500, units=["mV"] * 12, sig_name=leads, p_signal=signal_, fmt=["16"] * 12, write_dir=str(tmp)
        )
        files = tuple((n, (tmp / n).read_bytes()) for n in ("00001_hr.hea", "00001_hr.dat"))
        seeds.append(Seed("wfdb/00001_hr", "wfdb", files))
        grey = rng.integers(0, 256, (48, 64), np.uint8)
        for name, array, kind in (("grey.png", grey, "png"), ("rgb.png", np.dstack([grey] * 3), "png")):
            Image.fromarray(array).save(tmp / name)
            seeds.append(Seed(f"written/{name}", kind, ((name, (tmp / name).read_bytes()),)))
        Image.fromarray(grey).save(tmp / "photo.jpg", quality=80)
        seeds.append(Seed("written/photo.jpg", "jpeg", (("photo.jpg", (tmp / "photo.jpg").read_bytes()),)))
        writer = cv2.VideoWriter(str(tmp / "run.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 15, (32, 24))
        for k in range(8):
            writer.write(np.full((24, 32, 3), 20 * k, np.uint8))
        writer.release()
        seeds.append(Seed("written/run.mp4", "mp4", (("run.mp4", (tmp / "run.mp4").read_bytes()),)))
        volume = sitk.GetImageFromArray(rng.integers(-100, 100, (4, 8, 10)).astype(np.int16))
        volume.SetSpacing((0.8, 0.8, 2.0))
        for name, kind in (("vol.mha", "mha"), ("vol.nrrd", "nrrd")):
            sitk.WriteImage(volume, str(tmp / name))
            seeds.append(Seed(f"written/{name}", kind, ((name, (tmp / name).read_bytes()),)))
    return seeds


# ----- mutations ---------------------------------------------------------------------------------------------------
# fmt: off
HOSTILE_TEXT = ["0", "-1", "1", "3", "65535", "2147483647", "4294967296", "-2147483648", "1e308", "-0", "NaN",
                "inf", "", "1\\2\\3\\4\\5", "../../../x", "a/b", "\x00", "\x1b[31m", "A" * 300, "0.0\\0.0", "1e-300"]
HOSTILE_INT = [0, 1, 2, 3, 7, 255, 256, 32767, 65535, 1 << 20, (1 << 31) - 1, (1 << 32) - 1]
HOSTILE_FLOAT = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 3.4e38]
DICOM_KEYWORDS = [
    "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "PixelSpacing", "ImagerPixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient", "ImageOrientationPatient", "RescaleSlope",
    "RescaleIntercept", "WindowCenter", "WindowWidth", "FrameTime", "FrameTimeVector", "CineRate",
    "FrameIncrementPointer", "SeriesNumber", "SeriesDescription", "SeriesInstanceUID", "SOPClassUID",
    "SOPInstanceUID", "PatientName", "Modality", "TransferSyntaxUID", "NumberOfWaveformChannels",
    "NumberOfWaveformSamples", "SamplingFrequency", "WaveformBitsAllocated", "ChannelSensitivity",
]
NIFTI_FIELDS = {  # NIfTI-1 header: name -> (offset, struct format, count)
    "dim": (40, "h", 8), "datatype": (70, "h", 1), "bitpix": (72, "h", 1), "pixdim": (76, "f", 8),
    "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1), "scl_inter": (116, "f", 1),
    "qform_code": (252, "h", 1), "sform_code": (254, "h", 1), "quatern": (256, "f", 6), "srow": (280, "f", 12),
}
# fmt: on
# pydicom alone ships ~190 seeds: draw the format family first, so every reader gets its share.
FAMILY = {
    "dicom": "dicom",
    "nifti": "nifti",
    "nifti_gz": "nifti",
    "wfdb": "wfdb",
    "png": "image",
    "jpeg": "image",
    "mp4": "video",
    "mha": "itk",
    "nrrd": "itk",
}  # fmt: skip
FAMILY_WEIGHTS = {"dicom": 8, "nifti": 4, "wfdb": 3, "image": 2, "video": 2, "itk": 1}
MP4_BOXES = [b"ftyp", b"moov", b"mvhd", b"trak", b"tkhd", b"mdia", b"mdhd", b"stsd", b"stsz", b"stco", b"mdat"]


def mutant_strategy(seeds: list[Seed]):
    """Hypothesis strategy of ``(seed, file index, operations)``; operations are plain tuples (printable)."""
    from hypothesis import strategies as st

    frac = st.floats(0, 1, allow_nan=False)
    raw = st.one_of(
        st.tuples(st.just("flip"), st.lists(st.tuples(frac, st.integers(1, 255)), min_size=1, max_size=16)),
        st.tuples(st.just("truncate"), frac),
        st.tuples(st.just("insert"), frac, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), frac, st.integers(1, 256)),
        st.tuples(st.just("number"), st.integers(0, 40), st.sampled_from(HOSTILE_TEXT)),
    )
    dicom = st.one_of(
        st.tuples(st.just("dicom"), st.sampled_from(DICOM_KEYWORDS), st.integers(0, 10**6)),
        st.tuples(st.just("nest"), st.sampled_from([50, 500, 3000, 20000])),
    )
    nifti = st.tuples(
        st.just("nifti"), st.sampled_from(sorted(NIFTI_FIELDS)), st.integers(0, 11), st.integers(0, 10**6)
    )
    png = st.tuples(st.just("png"), st.sampled_from([16, 20, 24, 25]), st.sampled_from(HOSTILE_INT))
    wfdb = st.tuples(st.just("wfdb"), st.integers(0, 13), st.integers(0, 9), st.sampled_from(HOSTILE_TEXT))
    mp4 = st.tuples(st.just("box"), st.sampled_from(MP4_BOXES), st.sampled_from(HOSTILE_INT))
    by_kind = {"dicom": dicom, "nifti": nifti, "nifti_gz": nifti, "png": png, "wfdb": wfdb, "mp4": mp4}

    families: dict[str, list[Seed]] = {}
    for seed in seeds:
        families.setdefault(FAMILY[seed.kind], []).append(seed)
    weighted = [f for f, weight in FAMILY_WEIGHTS.items() if f in families for _ in range(weight)]

    @st.composite
    def mutant(draw):
        seed = draw(st.sampled_from(families[draw(st.sampled_from(weighted))]))
        index = draw(st.integers(0, len(seed.files) - 1))
        op = raw if seed.kind not in by_kind else st.one_of(raw, by_kind[seed.kind], by_kind[seed.kind])
        return seed, index, tuple(draw(st.lists(op, min_size=1, max_size=3)))

    return mutant()


def apply(seed: Seed, index: int, ops: tuple) -> dict[str, bytes]:
    """The mutant's files. A gzip NIfTI's header mutations act on the decompressed bytes."""
    files = dict(seed.files)
    name = seed.files[index][0]
    data = files[name]
    for op in ops:
        if op[0] in ("nifti", "number") and seed.kind == "nifti_gz":
            with contextlib.suppress(OSError, EOFError, zlib.error):
                data = gzip.compress(_apply(gzip.decompress(data), op, seed), mtime=0)
                continue
        data = _apply(data, op, seed)
    files[name] = data
    return files


def _at(data: bytes, frac: float) -> int:
    return min(len(data), int(frac * len(data)))


def _apply(data: bytes, op: tuple, seed: Seed) -> bytes:
    kind = op[0]
    if kind == "flip":
        buf = bytearray(data)
        for frac, xor in op[1]:
            if buf:
                buf[min(len(buf) - 1, _at(buf, frac))] ^= xor
        return bytes(buf)
    if kind == "truncate":
        return data[: _at(data, op[1])]
    if kind == "insert":
        at = _at(data, op[1])
        return data[:at] + op[2] + data[at:]
    if kind == "delete":
        at = _at(data, op[1])
        return data[:at] + data[at + op[2] :]
    if kind == "number":  # the n-th number in a text header (MHA, NRRD, WFDB, DICOM strings)
        import re

        runs = list(re.finditer(rb"-?\d+(\.\d+)?", data[:4096]))
        if not runs:
            return data
        m = runs[op[1] % len(runs)]
        return data[: m.start()] + op[2].encode("latin-1") + data[m.end() :]
    if kind == "dicom":
        return _dicom_value(data, op[1], op[2])
    if kind == "nest":
        return _dicom_nested(data, op[1])
    if kind == "nifti":
        return _nifti_field(data, op[1], op[2], op[3])
    if kind == "png":
        return _png_field(data, op[1], op[2])
    if kind == "wfdb":
        return _wfdb_field(data, op[1], op[2], op[3])
    if kind == "box":
        return _mp4_box(data, op[1], op[2])
    raise ValueError(op)


def _dicom_value(data: bytes, keyword: str, pick: int) -> bytes:
    """``keyword`` (top level, in the file meta, or in the first waveform item) set to a hostile value of its VR."""
    import pydicom
    from pydicom import config
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    if vr in ("US", "SS", "UL", "SL", "US or SS"):
        value = HOSTILE_INT[pick % len(HOSTILE_INT)] % (1 << (32 if vr in ("UL", "SL") else 16))
    elif vr in ("FL", "FD"):
        value = HOSTILE_FLOAT[pick % len(HOSTILE_FLOAT)]
    elif vr == "AT":
        value = [0x00180000, 0x00181063, 0xFFFFFFFF][pick % 3]
    else:
        value = HOSTILE_TEXT[pick % len(HOSTILE_TEXT)]
    old = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings_off():
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            target = ds.file_meta if keyword == "TransferSyntaxUID" else ds
            if (
                keyword.startswith(("NumberOfWaveform", "SamplingFrequency", "WaveformBits"))
                and "WaveformSequence" in ds
            ):
                target = ds.WaveformSequence[0]
            if keyword == "ChannelSensitivity" and "WaveformSequence" in ds:
                target = ds.WaveformSequence[0].ChannelDefinitionSequence[0]
            target[tag] = pydicom.DataElement(tag, "US" if vr == "US or SS" else vr, value)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=False)
            return out.getvalue()
    except Exception:  # noqa: BLE001 - a seed pydicom cannot round-trip: fall back to raw bytes
        return data
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = old


def _dicom_nested(data: bytes, depth: int) -> bytes:
    """A LanguageCodeSequence nested ``depth`` deep (undefined lengths), put first in the dataset."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != "1.2.840.10008.1.2.1":
            return data
    except Exception:  # noqa: BLE001
        return data
    start = fp.tell()
    open_sq = struct.pack("<HH2sHI", 0x0008, 0x0006, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    close_sq = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return data[:start] + open_sq * depth + close_sq * depth + data[start:]


def _nifti_field(data: bytes, field: str, index: int, pick: int) -> bytes:
    if len(data) < 348 or struct.unpack("<i", data[:4])[0] != 348:
        return data
    offset, fmt, count = NIFTI_FIELDS[field]
    offset += (index % count) * struct.calcsize(fmt)
    value = HOSTILE_FLOAT[pick % len(HOSTILE_FLOAT)] if fmt == "f" else [0, -1, 1, 7, 8, 32767, -32768][pick % 7]
    return data[:offset] + struct.pack("<" + fmt, value) + data[offset + struct.calcsize(fmt) :]


def _png_field(data: bytes, offset: int, value: int) -> bytes:
    """A PNG IHDR field (width 16, height 20, bit depth 24, colour type 25) with its CRC fixed, so the lie is read."""
    if data[12:16] != b"IHDR":
        return data
    size = 4 if offset in (16, 20) else 1
    value %= 1 << (8 * size)
    ihdr = bytearray(data[12:29])
    ihdr[offset - 12 : offset - 12 + size] = value.to_bytes(size, "big")
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[33:]


def _wfdb_field(data: bytes, line: int, field: int, value: str) -> bytes:
    if not data.startswith(b"00001_hr"):
        return data  # the .dat file: raw mutations only
    lines = data.decode("latin-1").split("\n")
    fields = lines[line % len(lines)].split(" ")
    fields[field % len(fields)] = value
    lines[line % len(lines)] = " ".join(fields)
    return "\n".join(lines).encode("latin-1", "replace")


def _mp4_box(data: bytes, box: bytes, value: int) -> bytes:
    at = data.find(box)
    if at < 4:
        return data
    return data[: at - 4] + (value % (1 << 32)).to_bytes(4, "big") + data[at:]


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----- running one mutant ------------------------------------------------------------------------------------------
class Slow(BaseException):
    """Raised by the alarm; a BaseException so no reader's ``except Exception`` swallows it."""


def _alarm(signum: int, frame: object) -> None:
    raise Slow()


def write_mutant(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def run_one(folder: Path, timeout: float) -> tuple[str, list[str]]:
    """Inspect one mutant folder: (outcome, crash reasons)."""
    from medml.errors import MedmlError
    from medml.io import inspect

    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings_off():
            report = inspect(folder)
    except Slow:
        return "slow", [f"over {timeout} s"]
    except MemoryError as exc:
        return "memory", [f"MemoryError: {exc}"]
    except MedmlError:
        return "refused", []
    except Exception as exc:  # noqa: BLE001 - escaped inspect itself: the worst kind of crash
        return "crash", [f"escaped inspect: {type(exc).__name__}: {exc}"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    unexpected = [e["reason"] for e in report["errors"] if e["reason"].startswith("unexpected ")]
    if any(r.startswith("unexpected Slow") for r in unexpected):  # the alarm rang inside a per-case handler
        return "slow", [f"over {timeout} s"]
    if any("MemoryError" in r for r in unexpected):
        return "memory", unexpected
    if unexpected:
        return "crash", unexpected
    return ("refused" if report["errors"] else "ok"), []


def replay(folder: Path) -> str:
    """The traceback of a crash: discover and inspect turn it into a reason, so run the step that raised alone
    (the classification of each failed file, the DICOM grouping of its header, the reader of each case)."""
    from collections import defaultdict

    from medml.errors import MedmlError
    from medml.io.discover import _classify, _header, _sort_header, discover, resolved_path, sniff
    from medml.io.readers import read_case

    try:
        with warnings_off():
            cases, failures = discover(folder)
            real = resolved_path(folder)
            for path, reason in failures:
                path = Path(path)
                if reason.startswith("unexpected ") and path.is_file():
                    with contextlib.suppress(MedmlError):
                        _classify(path, folder, real, [], [], set(), defaultdict(list), [])
                    if sniff(path) == "dicom":
                        with contextlib.suppress(MedmlError):
                            _sort_header(path, _header(path), folder, [], defaultdict(list), [])
            for case in cases:
                with contextlib.suppress(MedmlError):
                    read_case(case)
    except (KeyboardInterrupt, Slow):
        raise
    except BaseException:  # noqa: BLE001 - native decoders raise BaseException subclasses (pyo3 panics)
        return "\n".join(traceback.format_exc().splitlines()[-60:])
    return "(not reproduced by a plain discover + read_case)"


def signature(tb: str) -> str:
    """Exception type and the innermost medml frame (else the innermost frame): crashes with one cause share it."""
    lines = tb.strip().splitlines()
    frames = [ln.strip() for ln in lines if ln.strip().startswith('File "') and "benchmarks/fuzz.py" not in ln]
    ours = [f for f in frames if "/medml/" in f and "site-packages" not in f]
    frame = (ours or frames or ['File "?", line ?'])[-1]
    path, _, rest = frame[len('File "') :].partition('", line ')
    where = ("medml/" + path.split("/medml/")[-1]) if "/medml/" in path and "site-packages" not in path else path
    where = where.split("site-packages/")[-1]
    exc = lines[-1].split(":")[0] if lines else "?"
    return f"{exc} at {where}:{rest.split(',')[0]}"


# ----- the loop ----------------------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """Generate ``--n`` mutants with Hypothesis and run those from ``--start`` on, one JSON line each."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed

    seeds = build_seeds()
    work = Path(tempfile.mkdtemp(prefix="medml-fuzz-"))
    signal.signal(signal.SIGALRM, _alarm)
    for i, seed in enumerate(seeds):  # warm up every reader and its imports before measuring
        write_mutant(work / f"seed{i}", dict(seed.files))
        run_one(work / f"seed{i}", 60)
        shutil.rmtree(work / f"seed{i}")
    baseline = rss_mb()
    _cap_address_space(args.budget_mb)
    out = open(args.jsonl, "a")  # noqa: SIM115 - one line per mutant, flushed, so a dying worker loses nothing
    counter = {"i": -1}

    @hyp_seed(args.seed)
    @settings(
        max_examples=args.n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(mutant_strategy(seeds))
    def one(mutant):
        counter["i"] += 1
        i = counter["i"]
        if i < args.start:
            return
        seed, index, ops = mutant
        folder = work / f"m{i}"
        write_mutant(folder, apply(seed, index, ops))
        started = {"i": i, "outcome": "started", "seed": seed.name, "ops": _show(ops), "folder": str(folder)}
        out.write(json.dumps({**started, "t": time.time()}) + "\n")
        out.flush()
        reset_peak()
        start = time.perf_counter()
        outcome, reasons = run_one(folder, args.timeout)
        peak = peak_mb() - baseline
        if outcome not in ("memory", "slow") and peak > args.budget_mb:
            outcome, reasons = "memory", [f"peak {peak:.0f} MiB over the baseline"]
        row = {
            "i": i,
            "outcome": outcome,
            "seed": seed.name,
            "file": seed.files[index][0],
            "ops": _show(ops),
            "seconds": round(time.perf_counter() - start, 3),
            "peak_mb": round(peak, 1),
            "reasons": reasons,
        }
        if outcome in BAD:
            row["traceback"] = replay(folder) if outcome == "crash" else ""
            row["signature"] = signature(row["traceback"]) if outcome == "crash" else outcome
            if args.save:
                saved = Path(args.save) / f"m{i}"
                shutil.copytree(folder, saved, dirs_exist_ok=True)
                (saved.parent / f"m{i}.json").write_text(json.dumps(row, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        out.write(json.dumps(row) + "\n")
        out.flush()

    try:
        one()
    finally:
        out.close()
        shutil.rmtree(work, ignore_errors=True)


def _show(ops: tuple) -> str:
    return repr(ops) if len(repr(ops)) < 300 else repr(ops)[:297] + "..."


def _cap_address_space(budget_mb: float) -> None:
    """Address space capped at what the warm process maps plus 4x the budget: a reader that believes a lying
    header gets a MemoryError instead of taking the machine's memory (numpy and most decoders map lazily)."""
    with open("/proc/self/status") as fh:
        size_kb = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmSize:"))
    limit = int(size_kb * 1024 + 4 * budget_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def run(
    n: int,
    seed: int = 0,
    budget_mb: float = 1024,
    timeout: float = 30,
    save: str | None = None,
    jsonl: str | None = None,
    progress: bool = False,
) -> list[dict]:
    """Fuzz ``n`` mutants in worker processes (restarted after a native crash); one result dict per mutant."""
    own = jsonl is None
    jsonl = jsonl or tempfile.mktemp(suffix=".jsonl", prefix="medml-fuzz-")
    Path(jsonl).write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.update(
        OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1"
    )
    start = 0
    while start < n:
        cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--start", str(start), "--seed", str(seed),
               "--budget-mb", str(budget_mb), "--timeout", str(timeout), "--jsonl", jsonl]  # fmt: skip
        if save:
            cmd += ["--save", save]
        returncode, stderr = _watch(cmd, env, jsonl, timeout, progress)
        rows = _read(jsonl)
        done = {r["i"] for r in rows if r["outcome"] != "started"}
        if returncode == 0 or not rows:
            if returncode != 0:
                raise RuntimeError(f"fuzz worker failed before any input:\n{stderr[-3000:]}")
            break
        last = max(r["i"] for r in rows)
        if last not in done:  # it died or hung on this input (a native crash or a loop in C code)
            started = next(r for r in rows if r["i"] == last)
            hung = returncode == "hung"
            if save and started.get("folder") and Path(started["folder"]).is_dir():
                shutil.copytree(started["folder"], Path(save) / f"m{last}", dirs_exist_ok=True)
            with open(jsonl, "a") as fh:
                row = {"seed": started.get("seed"), "ops": started.get("ops", ""), "i": last,
                       "outcome": "slow" if hung else "died",
                       "signature": "hung in native code" if hung else f"died (exit {returncode})",
                       "stderr": stderr[-2000:]}  # fmt: skip
                fh.write(json.dumps(row) + "\n")
            if started.get("folder"):
                shutil.rmtree(Path(started["folder"]).parent, ignore_errors=True)
        start = last + 1
    results = [r for r in _read(jsonl) if r["outcome"] != "started"]
    if own:
        os.unlink(jsonl)
    return sorted(results, key=lambda r: r["i"])


def _watch(cmd: list[str], env: dict, jsonl: str, timeout: float, progress: bool) -> tuple[int | str, str]:
    """Run a worker; kill it when one input runs far past ``timeout`` (the alarm cannot stop C code)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=None if progress else subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            time.sleep(0.5)
            rows = _read(jsonl)[-1:]
            if rows and rows[0]["outcome"] == "started" and time.time() - rows[0]["t"] > timeout + 30:
                proc.kill()
                proc.wait()
                err.seek(0)
                return "hung", err.read().decode(errors="replace")
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace")


def _read(path: str) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000, help="mutants to run")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (the same seed gives the same mutants)")
    parser.add_argument("--budget-mb", type=float, default=1024, help="peak memory allowed per input over baseline")
    parser.add_argument("--timeout", type=float, default=30, help="seconds allowed per input")
    parser.add_argument("--save", help="folder for the mutants that crash, with their tracebacks")
    parser.add_argument("--jsonl", help="write one JSON line per mutant here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    started = time.perf_counter()
    results = run(args.n, args.seed, args.budget_mb, args.timeout, args.save, args.jsonl)
    seconds = time.perf_counter() - started
    counts = Counter(r["outcome"] for r in results)
    print(f"{len(results)} mutants in {seconds:.0f} s ({len(results) / seconds:.1f}/s), seed {args.seed}")
    for outcome in OUTCOMES:
        print(f"  {outcome:8s} {counts.get(outcome, 0)}")
    bad = Counter(r["signature"] for r in results if r["outcome"] in BAD)
    if bad:
        print("findings by signature (count, signature, first mutant):")
        for sig, count in bad.most_common():
            first = next(r for r in results if r.get("signature") == sig)
            print(f"  {count:5d}  {sig}  [m{first['i']}: {first.get('seed')} {first.get('ops', '')[:120]}]")
    peaks = sorted(r.get("peak_mb", 0) for r in results)
    if peaks:
        print(f"peak memory over baseline: median {peaks[len(peaks) // 2]:.0f} MiB, max {peaks[-1]:.0f} MiB")


if __name__ == "__main__":
    main()
