"""Folder prediction: outputs per case, failures, resume after a kill, sharding, no writes into the input."""

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medml.engine.checkpoint import load_checkpoint, read_checkpoint
from medml.engine.predict import predict_folder
from medml.errors import CheckpointError, ConfigError
from tests.engine.toy_pipeline import ToyCase, ToyPipeline


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


def test_input_and_output_may_not_overlap_in_either_direction(toy_run, clinical, tmp_path):
    """--output set to the input's parent once deleted the input: any overlap is refused, links followed."""
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    (tmp_path / "link").symlink_to(clinical)
    before = {p: p.read_bytes() for p in clinical.rglob("*")}
    for output, match in [
        (clinical.parent, "input folder is inside the output"),
        (tmp_path.parent, "input folder is inside the output"),
        (clinical, "inside the input"),
        (tmp_path / "link", "inside the input"),
        (tmp_path / "link" / "out", "inside the input"),
    ]:
        with pytest.raises(ConfigError, match=match) as err:
            predict_folder(pipeline, module, clinical, output, progress=False)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="input folder is inside the output"):
        predict_folder(pipeline, module, tmp_path / "link", tmp_path, progress=False)
    assert {p: p.read_bytes() for p in clinical.rglob("*")} == before
    assert not (tmp_path / ".medml").exists()


def test_an_output_that_is_a_file_or_not_writable_is_a_config_error(toy_run, clinical, tmp_path):
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(ConfigError, match="names a file"):
        predict_folder(pipeline, module, clinical, tmp_path / "file.txt", progress=False)
    assert (tmp_path / "file.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="cannot write"):
        predict_folder(pipeline, module, clinical, tmp_path / "file.txt" / "out", progress=False)
    if os.geteuid() == 0:  # root writes through permission bits: use a place nobody can write
        unwritable = Path("/proc/medml-out")
    else:
        unwritable = tmp_path / "ro"
        unwritable.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match="cannot write"):
        predict_folder(pipeline, module, clinical, unwritable, progress=False)


def test_folders_in_the_output_that_medml_did_not_make_are_never_removed(toy_run, clinical, tmp_path):
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    out = tmp_path / "out"
    (out / "case1").mkdir(parents=True)
    (out / "case1" / "notes.txt").write_text("the user's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (out / "case2").symlink_to(elsewhere)
    summary = predict_folder(pipeline, module, clinical, out, progress=False)
    assert (summary.done, summary.failed) == (3, 3)
    reasons = {r["case"]: r["reason"] for r in _rows(out / "failures.csv")}
    assert "not made by medml" in reasons["case1"] and "would leave --output" in reasons["case2"]
    assert (out / "case1" / "notes.txt").read_text() == "the user's"
    assert (out / "case2").is_symlink() and (elsewhere / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_unsafe_or_duplicate_case_ids_never_become_paths(toy_run, clinical, tmp_path):
    """Second line of defence: a pipeline whose own discovery makes ids from file content cannot escape."""
    good = clinical / "case0.toy"
    hostile = ["../escaped", "a/b", "x\x00y", ".hidden", "predictions.csv", "run.json", "A" * 300, "..", "", "case0"]

    class Hostile(ToyPipeline):
        def discover(self, input_dir):
            return [ToyCase(name, "toy", [good]) for name in hostile] + [ToyCase("case0", "toy", [good])], []

    _, module = load_checkpoint(toy_run.checkpoint)
    out = tmp_path / "deep" / "out"
    summary = predict_folder(Hostile(), module, clinical, out, progress=False)
    assert (summary.done, summary.failed) == (1, len(hostile))
    assert sorted(p.name for p in out.iterdir()) == [".medml", "case0", "failures.csv", "predictions.csv", "run.json"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]
    reasons = [r["reason"] for r in _rows(out / "failures.csv")]
    assert sum("unsafe case id" in r for r in reasons) == len(hostile) - 1
    assert sum("duplicate case id" in r for r in reasons) == 1
    assert all("\x00" not in r and "\n" not in r for r in reasons)


def test_any_exception_in_discovery_or_a_case_is_a_row_and_the_run_goes_on(toy_run, clinical, tmp_path):
    class Broken(ToyPipeline):
        def discover(self, input_dir):
            raise RecursionError("maximum recursion depth exceeded")

    class Deep(ToyPipeline):
        def load_case(self, case):
            if case.case_id == "case2":
                raise RecursionError("maximum recursion depth exceeded")
            return super().load_case(case)

    _, module = load_checkpoint(toy_run.checkpoint)
    summary = predict_folder(Broken(), module, clinical, tmp_path / "a", progress=False)
    assert (summary.done, summary.failed) == (0, 1)
    rows = _rows(tmp_path / "a" / "failures.csv")
    assert [(r["case"], r["reason"]) for r in rows] == [
        ("input", "unexpected RecursionError: maximum recursion depth exceeded")
    ]
    assert (tmp_path / "a" / "predictions.csv").is_file() and (tmp_path / "a" / "run.json").is_file()
    summary = predict_folder(Deep(), module, clinical, tmp_path / "b", progress=False)
    assert (summary.done, summary.failed) == (4, 2)


def test_an_interrupted_run_still_writes_its_tables(toy_run, clinical, tmp_path):
    class Interrupted(ToyPipeline):
        def write_case(self, case, sample, output, out_dir):
            if case.case_id == "case3":
                raise KeyboardInterrupt
            return super().write_case(case, sample, output, out_dir)

    _, module = load_checkpoint(toy_run.checkpoint)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_folder(Interrupted(), module, clinical, out, progress=False)
    assert sorted(r["case"] for r in _rows(out / "predictions.csv")) == ["case0", "case1", "case2"]
    assert [r["case"] for r in _rows(out / "failures.csv")] == ["broken"]
    record = json.loads((out / "run.json").read_text())
    assert record["interrupted"] is True and record["done"] == 3
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    again = predict_folder(pipeline, module, clinical, out, progress=False)  # and the rerun finishes the rest
    assert (again.done, again.skipped) == (2, 3) and len(_rows(out / "predictions.csv")) == 5


def test_no_input_path_in_the_outputs_unless_asked(toy_run, tmp_path):
    patient = tmp_path / "Doe_Jane_MRN4711"
    ToyPipeline().synthesize_clinical(patient)

    class Quoting(ToyPipeline):
        def load_case(self, case):
            if case.case_id == "case4":
                raise ValueError(f"cannot parse {case.paths[0].resolve()}")
            return super().load_case(case)

    _, module = load_checkpoint(toy_run.checkpoint)
    out = tmp_path / "out"
    predict_folder(Quoting(), module, patient, out, progress=False)
    written = "".join(p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix in (".csv", ".json"))
    assert "MRN4711" not in written and str(tmp_path) not in written
    rows = {r["case"]: r for r in _rows(out / "failures.csv")}
    assert rows["case4"]["path"] == "case4" and rows["case4"]["reason"] == "unexpected ValueError: cannot parse case4"
    assert rows["broken"]["path"] == "broken"
    record = json.loads((out / "run.json").read_text())
    assert record["input_dir"] is None and len(record["input_fingerprint"]) == 64

    kept = tmp_path / "kept"
    predict_folder(Quoting(), module, patient, kept, progress=False, anonymize_paths=False)
    rows = {r["case"]: r for r in _rows(kept / "failures.csv")}
    assert rows["case4"]["path"] == "case4.toy" and rows["broken"]["path"] == "broken.toy"
    assert rows["case4"]["reason"] == "unexpected ValueError: cannot parse case4.toy"
    assert json.loads((kept / "run.json").read_text())["input_dir"] == str(patient.resolve())


def _part(checkpoint, clinical, out, num_parts, part_id, barrier):
    """One ``--num-parts`` process. Part 0 predicts first but rebuilds the tables last, holding stale markers:
    without the lock its rebuild would overwrite the full tables with its partial ones."""
    import time

    import medml.engine.predict as predict_module

    collect = predict_module._collect
    discover = ToyPipeline.discover

    def slow_collect(state_dir, kind):
        rows = collect(state_dir, kind)
        time.sleep(0.8 * (num_parts - part_id))
        return rows

    def late_discover(self, input_dir):
        time.sleep(0.4 * part_id)
        return discover(self, input_dir)

    predict_module._collect = slow_collect
    ToyPipeline.discover = late_discover
    pipeline, module = load_checkpoint(checkpoint)
    barrier.wait()
    predict_folder(pipeline, module, clinical, out, num_parts=num_parts, part_id=part_id, progress=False)


def test_concurrent_parts_never_lose_a_row(toy_run, tmp_path):
    import multiprocessing

    clinical = tmp_path / "clinical"
    clinical.mkdir()
    for i in range(12):
        (clinical / f"c{i:02d}.toy").write_text(",".join(["0.5"] * 6))
    (clinical / "bad.toy").write_text("x")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_part, args=(toy_run.checkpoint, clinical, tmp_path / "out", 3, i, barrier))
        for i in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(r["case"] for r in _rows(tmp_path / "out" / "predictions.csv")) == [f"c{i:02d}" for i in range(12)]
    assert [r["case"] for r in _rows(tmp_path / "out" / "failures.csv")] == ["bad"]


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
    assert sorted(r["case"] for r in _rows(tmp_path / "out" / "failures.csv")) == ["a__x", "b__x"]
    predict_folder(Unreadable(), module, tmp_path / "in", tmp_path / "kept", progress=False, anonymize_paths=False)
    rows = _rows(tmp_path / "kept" / "failures.csv")
    assert sorted((r["case"], r["path"]) for r in rows) == [("a/x.dcm", "a/x.dcm"), ("b/x.dcm", "b/x.dcm")]


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
