"""Hostile input folders end to end: ``medml inspect`` and ``medml predict`` finish with their tables, print no
traceback, write nothing outside ``--output``, and leave the input byte-identical."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medml.cli import main
from medml.engine.checkpoint import load_checkpoint
from medml.engine.predict import predict_folder
from medml.io import read_case
from medml.io.types import CASE_KINDS
from medml.pipelines.base import Pipeline
from tests.engine.toy_pipeline import N_FEATURES, ToyPipeline

FUZZ_DATA = Path(__file__).resolve().parent / "data" / "fuzz"


def make_hostile_folder(tmp_path: Path) -> Path:
    """A folder of what once stopped a folder run or was skipped without a word; ``tmp_path / "outside"`` holds
    the targets of links and header references that leave it."""
    import wfdb
    from pydicom.data import get_testdata_file

    from medml.io.synthetic import write_ct_series

    root = tmp_path / "in"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"x" * 200)
    (outside / "vol.raw").write_bytes(b"\0" * 8)
    (root / "loop").symlink_to(root / "loop")
    (root / "ping").symlink_to(root / "pong")
    (root / "pong").symlink_to(root / "ping")
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "out_file").symlink_to(outside / "secret.dcm")
    (root / "out_dir").symlink_to(outside)
    (root / "up").symlink_to(root)
    os.mkfifo(root / "pipe")
    (root / "empty.dcm").write_bytes(b"")
    (root / "garbage.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    (root / "text.nii.gz").write_bytes(gzip.compress(b"hello" * 200))
    (root / "plain.nii").write_bytes(b"\0" * 400)
    (root / os.fsdecode(b"bad\xff\n.dcm")).write_bytes(b"not DICOM" * 20)  # a failing file named in no encoding
    write_ct_series(root / "predictions.csv", shape=(3, 8, 10), series_number=7, seed=4)  # named like a table
    weird = root / os.fsdecode(b"caf\xe9_\x01\x1b[31m")  # not UTF-8, with control characters
    weird.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), weird / "one.dcm")
    deep = root / "deep" / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    shutil.copy(get_testdata_file("SC_rgb_small_odd.dcm"), deep / "x")
    signal = np.zeros((100, 1))
    wfdb.wrsamp("rec", fs=100, units=["mV"], sig_name=["I"], p_signal=signal, fmt=["16"], write_dir=str(root))
    (root / "rec.hea").write_text((root / "rec.hea").read_text().replace("rec.dat", "../outside/rec.dat", 1))
    (root / "vol.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
        "ElementDataFile = ../outside/vol.raw\n"
    )
    for name in ("rle_decoder_panic.dcm", "png_claims_2147483647_rows.png"):  # reader crashes found by the fuzzer
        shutil.copy(FUZZ_DATA / name, root / name)
    return root


def _snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` without following links: file bytes, link targets, folder names."""
    state: dict[str, object] = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(top) / name
            rel = os.fsencode(path.relative_to(folder))
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_file():
                state[rel] = ("file", path.read_bytes())
            else:
                state[rel] = ("other", path.lstat().st_mode)
    return state


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


class AnyCase(ToyPipeline):
    """The toy model on every kind of clinical file, through the real discovery and readers."""

    input_kinds = CASE_KINDS

    def discover(self, input_dir):
        return Pipeline.discover(self, input_dir)

    def load_case(self, case):
        record = read_case(case)
        array = next(getattr(record, a) for a in ("array", "frames", "signal") if hasattr(record, a))
        values = np.asarray(array, np.float32).ravel()[:4096]
        return {"x": torch.tensor(np.resize(values, N_FEATURES))}


@pytest.fixture()
def hostile(tmp_path):
    return make_hostile_folder(tmp_path)


def test_inspect_over_a_hostile_folder_finishes_without_a_traceback(hostile, capsys):
    assert main(["inspect", str(hostile)]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    assert all(line.isprintable() for line in printed.out.splitlines())
    assert main(["inspect", str(hostile), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    reasons = " ".join(e["reason"] for e in report["errors"])
    assert "symbolic link loop" in reasons and "outside the input folder" in reasons and "empty file" in reasons
    assert len(report["cases"]) >= 3


def test_predict_over_a_hostile_folder_writes_its_tables_and_touches_nothing_else(toy_run, hostile, tmp_path):
    _, module = load_checkpoint(toy_run.checkpoint)
    before_in, before_out = _snapshot(hostile), _snapshot(tmp_path / "outside")
    out = tmp_path / "out"
    summary = predict_folder(AnyCase(), module, hostile, out, progress=False)
    assert _snapshot(hostile) == before_in and _snapshot(tmp_path / "outside") == before_out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "outside"]  # nothing written elsewhere
    predictions, failures = _rows(out / "predictions.csv"), _rows(out / "failures.csv")
    assert summary.done == len(predictions) >= 3 and summary.failed == len(failures) >= 12
    assert all(r["reason"] and "\n" not in r["reason"] and r["reason"].isprintable() for r in failures)
    assert all(r["case"].isprintable() and "/" not in r["case"] for r in failures)  # anonymised: case ids
    for row in predictions:
        assert (out / row["case"]).is_dir()
    assert json.loads((out / "run.json").read_text())["done"] == summary.done
    again = predict_folder(AnyCase(), module, hostile, out, progress=False)  # resume: nothing new, nothing lost
    assert again.skipped == summary.done and len(_rows(out / "predictions.csv")) == len(predictions)
    kept = tmp_path / "kept"
    predict_folder(AnyCase(), module, hostile, kept, progress=False, anonymize_paths=False)
    paths = {r["path"]: r["reason"] for r in _rows(kept / "failures.csv")}
    assert "not a DICOM file" in paths["bad\\xff\\n.dcm"]  # undecodable bytes and controls escaped, one line
    assert paths["loop"] == "symbolic link loop" and "outside the input" in paths["rec.hea"]


def test_cli_refuses_overlapping_or_unusable_outputs_in_one_line(toy_run, hostile, tmp_path, capsys):
    before = _snapshot(hostile)
    (tmp_path / "a_file").write_text("mine")
    for output in (tmp_path, hostile, hostile / "sub", tmp_path / "a_file"):
        args = ["predict", "toy", "--input", str(hostile), "--checkpoint", str(toy_run.checkpoint)]
        assert main([*args, "--output", str(output), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("medml: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(hostile) == before and (tmp_path / "a_file").read_text() == "mine"


def test_a_text_or_garbage_checkpoint_is_one_line_exit_2(hostile, tmp_path, capsys):
    (tmp_path / "five.ckpt").write_text("hello")
    (tmp_path / "junk.ckpt").write_bytes(b"\x80\x02}q\x00(X\x01")  # a pickle cut short: torch's parser IndexErrors
    for ckpt in ("five.ckpt", "junk.ckpt"):
        args = ["predict", "toy", "--input", str(hostile), "--checkpoint", str(tmp_path / ckpt)]
        assert main([*args, "--output", str(tmp_path / "out"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("medml: error:") and err.count("\n") == 1 and "not a readable PyTorch" in err


def test_reasons_keep_words_that_contain_the_input_folder_name():
    from medml.engine.predict import _scrub

    text = "the link leads outside the input folder; in/a/b.dcm is bad"
    assert _scrub(text, Path("in"), "") == "the link leads outside the input folder; a/b.dcm is bad"
    assert _scrub("cannot read /x/in/c.dcm", Path("/x/in"), "INPUT") == "cannot read INPUT/c.dcm"


def test_convert_never_overwrites_its_input_and_a_bad_output_is_one_line(tmp_path, capsys):
    from medml.io.synthetic import write_ct_series

    series = tmp_path / "series"
    write_ct_series(series, shape=(3, 8, 10), series_number=1, seed=0)
    before = _snapshot(series)
    (tmp_path / "a_file").write_text("mine")
    first = sorted(series.iterdir())[0]
    for output in (first, series / "inside.nii.gz", tmp_path / "a_file" / "x.nii.gz", tmp_path):
        assert main(["convert", str(series), str(output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("medml: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(series) == before and (tmp_path / "a_file").read_text() == "mine"
    assert main(["convert", str(series), str(tmp_path / "ok.nii.gz")]) == 0


class ImagesOnly(AnyCase):
    input_kinds = ("image",)


def test_a_case_of_another_kind_keeps_its_anonymised_id(toy_run, tmp_path):
    """A DICOM series under a folder named after its patient is not an input of an image pipeline: its failure row
    carries the id discovery made (patient name removed), not one rebuilt from the folder names."""
    from medml.io.synthetic import write_ct_series

    series = tmp_path / "in" / "Smith_John" / "series1"
    write_ct_series(series, shape=(4, 16, 16))
    for path in series.iterdir():  # the patient's name is in the header too, as in real exports
        ds = pydicom.dcmread(path)
        ds.PatientName = "Smith^John"
        ds.save_as(path)
    _, module = load_checkpoint(toy_run.checkpoint)
    predict_folder(ImagesOnly(), module, tmp_path / "in", tmp_path / "out", progress=False)
    (row,) = _rows(tmp_path / "out" / "failures.csv")
    assert "not an input" in row["reason"]
    assert "smith" not in (row["case"] + row["path"] + row["reason"]).lower()
