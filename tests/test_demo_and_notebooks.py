"""The product path end to end: ``medml demo`` for every registered pipeline, then every notebook executed
against the finished tiny runs (as a user would open them after ``make demo``)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from medml.demo import run_demo
from medml.registry import list_pipelines

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PIPELINES = [n for n in list_pipelines() if n != "toy"]


@pytest.fixture(scope="module")
def demos(tiny_demo):
    """Every pipeline's shared tiny demo (see ``tests/conftest.py``), finished."""
    return [tiny_demo(name) for name in PIPELINES]


def test_demo_writes_a_report_for_every_pipeline(demos, demo_root):
    # Finished runs are reused, not retrained: the report comes from the shared runs, whose checkpoints stay put.
    before = {p: p.stat().st_mtime_ns for p in demo_root.rglob("model.ckpt")}
    text = run_demo(demo_root, names=PIPELINES, progress=False).read_text()
    assert {p: p.stat().st_mtime_ns for p in demo_root.rglob("model.ckpt")} == before
    assert "SYNTHETIC" in text
    for name in PIPELINES:
        summary = json.loads((demo_root / name / "demo.json").read_text())
        assert summary["predicted"] > 0, name
        assert summary["metrics"], name
        assert f"<h2>{name}:" in text
        assert (demo_root / name / "predictions" / "failures.csv").is_file()
    assert text.count("data:image/png;base64,") >= len(PIPELINES)


# A cell that draws: what it draws must reach the notebook as an image (a library switching matplotlib to a
# headless backend, or closing figures, makes them vanish without an error).
DRAWS = re.compile(r"plt\.(subplots|figure|imshow|plot|show)\(|display\(Image\(|\.plot\(")


def figure_cells_without_image(nb) -> list[str]:
    """The first line of every code cell that draws but shows no image."""
    missing = []
    for cell in nb.cells:
        if cell.cell_type == "code" and DRAWS.search(cell.source):
            if not any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
                missing.append(cell.source.splitlines()[0])
    return missing


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(notebook, demos, demo_root, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDML_NOTEBOOK_QUICK", "1")  # notebooks read the shared tiny runs and train nothing more
    monkeypatch.setenv("MEDML_DEMO_DIR", str(demo_root))  # the documented way to point notebooks at a demo
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel then picks Jupyter's inline backend, as for users
    nb = nbformat.read(notebook, as_version=4)
    # No cell timeout: a busy machine must not fail a correct notebook (pytest's own limits still apply).
    NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert "using the finished" in "".join(o.get("text", "") for o in nb.cells[0].get("outputs", []))
    assert sum(bool(DRAWS.search(c.source)) for c in nb.cells if c.cell_type == "code") >= 2
    assert figure_cells_without_image(nb) == []


def test_training_shows_one_bar_per_stage_without_framework_noise(toy_data, tmp_path):
    # A subprocess, as a user's terminal sees it: inside pytest, Lightning's info lines go to pytest's log capture.
    # Without quiet_training the same run prints "GPU available", the litlogger tip and a LeafSpec deprecation.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from medml.config import load_config; from medml.engine.progress import quiet_training;"
        "from medml.engine.train import train; from tests.engine.toy_pipeline import ToyPipeline;"
        "p = ToyPipeline(load_config(ToyPipeline.Config, None, ['train.progress=true', 'train.max_epochs=3']));"
        "ctx = quiet_training(); ctx.__enter__(); train(p, sys.argv[2], sys.argv[3])"
    )
    root = str(Path(__file__).resolve().parents[1])
    args = [sys.executable, "-c", script, root, str(toy_data), str(tmp_path / "run")]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    shown = (done.stdout + done.stderr).replace("\r", "\n")
    bars = {line.split(":")[0] for line in shown.splitlines() if "|" in line}
    assert bars == {"toy train fit"}  # the run stage trains nothing, so it has no bar
    assert "epoch=3/3" in shown and "Epoch 0" not in shown  # one bar over all epochs, not Lightning's per epoch
    assert [n for n in ("GPU available", "Tip:", "LeafSpec", "Warning") if n in shown] == []
