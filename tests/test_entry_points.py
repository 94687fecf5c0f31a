"""A pipeline from another package: registered through the ``medml.pipelines`` entry point, listed, trained."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medml import registry
from medml.cli import main

REPO = Path(__file__).resolve().parents[1]

MODULE = '''
"""An external medml pipeline: the engine's toy pipeline under another name."""
from medml.registry import register_pipeline
from tests.engine.toy_pipeline import ToyPipeline


@register_pipeline
class ExternalToy(ToyPipeline):
    name = "toyext"
    summary = "a pipeline installed from another package"
'''


@pytest.fixture()
def external(tmp_path, monkeypatch):
    """A tiny installed distribution (module + dist-info with entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "medml_toyext.py").write_text(MODULE)
    info = site / "medml_toyext-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medml-toyext\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medml.pipelines]\ntoyext = medml_toyext\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    registry._PIPELINES.pop("toyext", None)  # later tests see only what is installed
    sys.modules.pop("medml_toyext", None)


def test_external_pipeline_is_listed_without_import_and_trains(external, tmp_path, toy_data, capsys):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(external), str(REPO)])}
    code = "import sys\nfrom medml.cli import main\nmain(['list'])\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "toyext     a pipeline installed from another package" in lines
    assert lines[-1] == "False"  # read from its source, not imported

    assert "toyext" in registry.list_pipelines()
    assert main(["train", "toyext", "--data", str(toy_data), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model.ckpt").is_file()
    assert registry.get_pipeline("toyext").__module__ == "medml_toyext"


def test_a_broken_entry_point_is_one_line(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    info = site / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medml.pipelines]\nbroken = medml_no_such_module:Thing\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    code = main(["train", "broken", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "medml_no_such_module" in err
