"""The product path end to end: ``medml demo`` for every registered pipeline, then every notebook executed
against the finished tiny runs (as a user would open them after ``make demo``)."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from medml.demo import run_demo
from medml.registry import list_pipelines

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PIPELINES = [n for n in list_pipelines() if n != "toy"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    report = run_demo(root / "medml-demo", names=PIPELINES, progress=False)
    return root, report


def test_demo_writes_a_report_for_every_pipeline(demo_root):
    root, report = demo_root
    text = report.read_text()
    assert "SYNTHETIC" in text
    for name in PIPELINES:
        summary = json.loads((root / "medml-demo" / name / "demo.json").read_text())
        assert summary["predicted"] > 0, name
        assert summary["metrics"], name
        assert f"<h2>{name}:" in text
        assert (root / "medml-demo" / name / "predictions" / "failures.csv").is_file()
    assert text.count("data:image/png;base64,") >= len(PIPELINES)


def test_demo_is_idempotent(demo_root):
    root, _ = demo_root
    before = {p: p.stat().st_mtime_ns for p in (root / "medml-demo").rglob("model.ckpt")}
    run_demo(root / "medml-demo", names=PIPELINES, progress=False)  # finished runs are reused, not retrained
    assert {p: p.stat().st_mtime_ns for p in (root / "medml-demo").rglob("model.ckpt")} == before


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(notebook, demo_root):
    root, _ = demo_root
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
