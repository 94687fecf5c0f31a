"""Bounded mutation fuzzing (``benchmarks/fuzz.py`` is the long run): only medml's own errors come out of
discover + the readers + inspect, and memory stays within the budget."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from medml.io import inspect

pytest.importorskip("hypothesis")
fuzz = importlib.import_module("benchmarks.fuzz")

DATA = Path(__file__).resolve().parents[1] / "data" / "fuzz"

# Crashes the fuzzer found in reader modules that another change hardens; until then they are allowed here (and
# xfail below). Keyed by the start of the crash signature: exception type and where it was raised.
KNOWN_READER_CRASHES = {
    "RecursionError at pydicom/": "medml.io.dicom.read_dataset lets pydicom's RecursionError through for a "
    "deeply nested sequence (it should be a CorruptFileError)",
    "pyo3_runtime.PanicException at medml/io/dicom.py": "the RLE decoder (pylibjpeg-rle) panics on corrupt RLE "
    "segments; medml.io.dicom does not turn the panic (a BaseException) into a CorruptFileError",
    "PIL.Image.DecompressionBombError at medml/io/image.py": "read_image_file lets Pillow's DecompressionBombError "
    "through for a PNG that claims 2147483647 rows (it should be an AbsurdSizeError)",
}


def _known(row: dict) -> bool:
    return any(row.get("signature", "").startswith(k) for k in KNOWN_READER_CRASHES)


def test_bounded_fuzz_gives_only_medml_errors_within_the_memory_budget(tmp_path):
    results = fuzz.run(300, seed=0, budget_mb=1024, timeout=30, save=str(tmp_path / "crashes"))
    assert len(results) == 300
    outcomes = {r["outcome"] for r in results}
    assert {"ok", "refused"} <= outcomes  # the seeds are read and the mutants refused, so the harness works
    findings = [r for r in results if r["outcome"] in fuzz.BAD and not _known(r)]
    assert not findings, "\n".join(f"{r['signature']}: {r.get('seed')} {r.get('ops')}" for r in findings)
    assert max(r.get("peak_mb", 0) for r in results) < 1024


def _nested_dicom(folder: Path) -> Path:
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    nested = fuzz._dicom_nested(data, 3000)
    assert nested != data
    (folder / "nested.dcm").write_bytes(nested)
    return folder


REPRODUCERS = {
    "nested_sequence": (_nested_dicom, "RecursionError at pydicom/"),
    "rle_decoder_panic": ("rle_decoder_panic.dcm", "pyo3_runtime.PanicException at medml/io/dicom.py"),
    "png_size_claim": ("png_claims_2147483647_rows.png", "PIL.Image.DecompressionBombError at medml/io/image.py"),
}


def _reproducer(name: str, tmp_path: Path) -> Path:
    source, _ = REPRODUCERS[name]
    folder = tmp_path / name
    folder.mkdir()
    if callable(source):
        return source(folder)
    shutil.copy(DATA / source, folder / source)
    return folder


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_READER_CRASHES[sig])) for n, (_, sig) in REPRODUCERS.items()],
)
def test_reader_refuses_fuzz_reproducer_with_a_medml_error(name, tmp_path):
    report = inspect(_reproducer(name, tmp_path))
    assert [e["reason"] for e in report["errors"] if e["reason"].startswith("unexpected ")] == []


def test_a_folder_of_reproducers_is_inspected_to_the_end(tmp_path):
    """Whatever a reader lets through, inspect reports each file as one error line and goes on."""
    folder = tmp_path / "all"
    folder.mkdir()
    for name in REPRODUCERS:
        for path in _reproducer(name, tmp_path).iterdir():
            shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("a sidecar, skipped")
    report = inspect(folder)
    assert len(report["errors"]) == 3 and report["cases"] == []
    assert all("\n" not in e["reason"] for e in report["errors"])
