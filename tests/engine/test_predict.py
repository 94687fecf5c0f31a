"""Folder prediction: outputs per case, failures, resume after a kill, sharding, no writes into the input."""

import csv
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from medml.engine.checkpoint import load_checkpoint, read_checkpoint
from medml.engine.predict import predict_folder
from medml.errors import CheckpointError, ConfigError
from tests.engine.toy_pipeline import ToyPipeline


@pytest.fixture()
def clinical(tmp_path):
    return ToyPipeline().synthesize_clinical(tmp_path / "clinical")


def _rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_predicts_every_case_and_lists_the_bad_one(toy_run, clinical, tmp_path):
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    before = _snapshot(clinical)
    summary = predict_folder(
        pipeline, module, clinical, tmp_path / "out", progress=False, checkpoint=toy_run.checkpoint
    )
    assert (summary.done, summary.failed) == (5, 1)
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert sorted(r["case"] for r in rows) == [f"case{i}" for i in range(5)]
    for row in rows:
        written = float((tmp_path / "out" / row["case"] / "prediction.txt").read_text())
        assert written == pytest.approx(float(row["y"]), abs=1e-5)
    failures = _rows(tmp_path / "out" / "failures.csv")
    assert [(f["case"], f["reason"]) for f in failures] == [("broken", "not a row of numbers")]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["done"] == 5 and len(record["checkpoint_sha256"]) == 64
    assert _snapshot(clinical) == before  # the input folder is untouched
    assert not list((tmp_path / "out").rglob("*.part*"))  # no temporary files left behind


def test_values_match_the_model(toy_run, clinical, tmp_path):
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    predict_folder(pipeline, module, clinical, tmp_path / "out", progress=False)
    x = torch.tensor([float(v) for v in (clinical / "case3.toy").read_text().split(",")])
    with torch.no_grad():
        expected = float(module(x[None]))
    assert float((tmp_path / "out" / "case3" / "prediction.txt").read_text()) == pytest.approx(expected, abs=1e-5)


def test_resume_skips_finished_cases_and_redoes_half_written_ones(toy_run, clinical, tmp_path):
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    out = tmp_path / "out"
    predict_folder(pipeline, module, clinical, out, progress=False)
    # simulate a kill while case2 was being written: its marker is missing and its folder is half-full
    marker = next(p for p in (out / ".medml" / "done").glob("*.json") if json.loads(p.read_text())["case"] == "case2")
    marker.unlink()
    (out / "case2" / "prediction.txt").write_text("garbage")
    again = predict_folder(pipeline, module, clinical, out, progress=False)
    assert (again.done, again.skipped, again.failed) == (1, 4, 1)
    assert float((out / "case2" / "prediction.txt").read_text())  # rewritten with a number
    assert len(_rows(out / "predictions.csv")) == 5


def test_killed_predict_process_resumes(toy_run, clinical, tmp_path):
    """A real kill: the process dies after two cases; the rerun predicts only the rest."""
    script = (
        "import os, sys\n"
        "sys.path.insert(0, os.getcwd())\n"
        "from tests.engine.toy_pipeline import ToyPipeline\n"
        "from medml.engine.checkpoint import load_checkpoint\n"
        "from medml.engine.predict import predict_folder\n"
        "calls = []\n"
        "original = ToyPipeline.write_case\n"
        "def dying(self, *a):\n"
        "    if len(calls) == 2: os._exit(9)\n"
        "    calls.append(1); return original(self, *a)\n"
        "ToyPipeline.write_case = dying\n"
        f"p, m = load_checkpoint(r'{toy_run.checkpoint}')\n"
        f"predict_folder(p, m, r'{clinical}', r'{tmp_path / 'out'}', progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    summary = predict_folder(pipeline, module, clinical, tmp_path / "out", progress=False)
    assert (summary.skipped, summary.done) == (2, 3)


def test_shards_partition_the_cases(toy_run, clinical, tmp_path):
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    counts = [
        predict_folder(pipeline, module, clinical, tmp_path / "out", num_parts=3, part_id=i, progress=False).done
        for i in range(3)
    ]
    assert sum(counts) == 5 and max(counts) <= 2
    assert len(_rows(tmp_path / "out" / "predictions.csv")) == 5  # the last part leaves the full table
    with pytest.raises(ConfigError, match="part-id"):
        predict_folder(pipeline, module, clinical, tmp_path / "out", num_parts=2, part_id=2)


def test_never_writes_inside_the_input_folder(toy_run, clinical):
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    with pytest.raises(ConfigError, match="inside the input"):
        predict_folder(pipeline, module, clinical, clinical / "predictions", progress=False)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_checkpoint_is_refused_not_executed(toy_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = torch.load(toy_run.checkpoint, weights_only=True)
    ckpt["payload"] = _Exploit()
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_errors_are_one_line(toy_run, tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    for name, match in [
        ("missing.ckpt", "not found"),
        ("junk.ckpt", "not a readable"),
        ("foreign.ckpt", "not a medml checkpoint"),
    ]:
        with pytest.raises(CheckpointError, match=match) as err:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(CheckpointError, match="not 'ecg'"):
        load_checkpoint(toy_run.checkpoint, expect_pipeline="ecg")


def test_lightning_stage_checkpoints_load_too(toy_run):
    last = toy_run.run_dir / "stages" / "00-fit" / "checkpoints" / "last.ckpt"
    pipeline, module = load_checkpoint(last)
    assert pipeline.name == "toy" and not module.training


def test_two_unreadable_files_with_one_name_are_two_failures(toy_run, tmp_path):
    class Unreadable(ToyPipeline):
        def discover(self, input_dir):
            return [], [(str(input_dir / "a" / "x.dcm"), "truncated"), (str(input_dir / "b" / "x.dcm"), "truncated")]

    (tmp_path / "in").mkdir()
    _, module = load_checkpoint(toy_run.checkpoint)
    predict_folder(Unreadable(), module, tmp_path / "in", tmp_path / "out", progress=False)
    assert sorted(r["case"] for r in _rows(tmp_path / "out" / "failures.csv")) == ["a/x.dcm", "b/x.dcm"]


def test_an_output_folder_of_another_model_is_refused(toy_run, clinical, tmp_path):
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    predict_folder(pipeline, module, clinical, tmp_path / "out", progress=False)
    with torch.no_grad():
        module.offset += 1.0  # a different model
    with pytest.raises(ConfigError, match="another model"):
        predict_folder(pipeline, module, clinical, tmp_path / "out", progress=False)


def test_a_case_whose_writer_fails_leaves_no_outputs(toy_run, clinical, tmp_path):
    class HalfWriter(ToyPipeline):
        def write_case(self, case, sample, output, out_dir):
            row = super().write_case(case, sample, output, out_dir)
            if case.case_id == "case1":
                raise OSError("disk full")
            return row

    _, module = load_checkpoint(toy_run.checkpoint)
    summary = predict_folder(HalfWriter(), module, clinical, tmp_path / "out", progress=False)
    assert (summary.done, summary.failed) == (4, 2)
    assert not (tmp_path / "out" / "case1").exists()
    reasons = {r["case"]: r["reason"] for r in _rows(tmp_path / "out" / "failures.csv")}
    assert reasons["case1"] == "unexpected OSError: disk full"
