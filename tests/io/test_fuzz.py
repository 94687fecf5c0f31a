"""Bounded mutation fuzzing (``benchmarks/fuzz.py`` is the long run): only medml's own errors come out of
discover + the readers + inspect, and memory stays within the budget."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

fuzz = importlib.import_module("benchmarks.fuzz")

DATA = Path(__file__).resolve().parents[1] / "data" / "fuzz"

# Crashes the fuzzer found in the readers, each fixed and kept below as a reproducer; a crash found later that cannot
# be fixed at once goes here (keyed by the start of its signature: exception type and where it was raised).
KNOWN_READER_CRASHES: dict[str, str] = {}


def _known(row: dict) -> bool:
    return any(row.get("signature", "").startswith(k) for k in KNOWN_READER_CRASHES)


def test_bounded_fuzz_gives_only_medml_errors_within_the_memory_budget(tmp_path):
    pytest.importorskip("hypothesis")  # the dev extra
    results = fuzz.run(300, seed=0, budget_mb=1024, timeout=30, save=str(tmp_path / "crashes"))
    assert len(results) == 300
    outcomes = {r["outcome"] for r in results}
    assert {"ok", "refused"} <= outcomes  # the seeds are read and the mutants refused, so the harness works
    findings = [r for r in results if r["outcome"] in fuzz.BAD and not _known(r)]
    assert not findings, "\n".join(f"{r['signature']}: {r.get('seed')} {r.get('ops')}" for r in findings)
    assert max(r.get("peak_mb", 0) for r in results) < 1024


def _nested_dicom(folder: Path) -> None:
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (folder / "nested.dcm").write_bytes(fuzz._dicom_nested(data, 3000))


# name: (file in tests/data/fuzz, or a function writing the file; what it once did)
REPRODUCERS = {
    "nested_sequence": (_nested_dicom, "RecursionError from pydicom"),
    "rle_decoder_panic": ("rle_decoder_panic.dcm", "pyo3 PanicException (a BaseException) from pylibjpeg-rle"),
    "png_size_claim": ("png_claims_2147483647_rows.png", "Pillow's DecompressionBombError"),
    "meta_group_length": ("meta_group_length_mangled.dcm", "pydicom's BytesLengthException"),
    "element_length_claim": ("element_length_claims_gigabytes.dcm", "MemoryError under an address-space cap"),
    "mha_ndims_minus_one": ("mha_ndims_minus_one.mha", "SimpleITK crashed or hung"),
    "mha_direction_1e308": ("mha_direction_1e308.mha", "LinAlgError from a direction matrix scaled by 1e308"),
}

# Inspect in a child process with a 3 GiB address space and a time limit: some reproducers crash or hang native code.
_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
from medml.io import inspect
report = inspect(sys.argv[1])
print(json.dumps([e["reason"] for e in report["errors"]]))
"""


def _inspect_child(folder: Path) -> list[str]:
    """The error reasons of ``inspect(folder)``; a crash or a hang of the child fails the calling test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fuzz.REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder)], env=env, capture_output=True, text=True, timeout=25
    )
    assert proc.returncode == 0, f"inspect died with {proc.returncode}: {proc.stderr[-1000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def _reproducer(name: str, folder: Path) -> None:
    source, _ = REPRODUCERS[name]
    folder.mkdir(exist_ok=True)
    if callable(source):
        source(folder)
    else:
        shutil.copy(DATA / source, folder / source)


@pytest.mark.parametrize("name", list(REPRODUCERS))
def test_reader_refuses_fuzz_reproducer_with_a_medml_error(name, tmp_path):
    _reproducer(name, tmp_path / name)
    try:
        reasons = _inspect_child(tmp_path / name)
    except subprocess.TimeoutExpired:
        pytest.fail("inspect hung")
    assert len(reasons) == 1 and not reasons[0].startswith("unexpected ")


def test_a_folder_of_reproducers_is_inspected_to_the_end(tmp_path):
    """Every reproducer in one folder: inspect reports each file as one error line and goes on."""
    folder = tmp_path / "all"
    for name in REPRODUCERS:
        _reproducer(name, folder)
    (folder / "notes.txt").write_text("a sidecar, skipped")
    reasons = _inspect_child(folder)
    assert len(reasons) == len(REPRODUCERS)
    assert all("\n" not in r for r in reasons)
