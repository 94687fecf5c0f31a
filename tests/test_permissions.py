"""Outputs respect the umask like any other tool (0644 under umask 022), not the owner-only mode of a temp file."""

import os
import stat
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from pydicom.data import get_testdata_file

from medml import io
from medml.engine.checkpoint import load_checkpoint
from medml.engine.predict import predict_folder
from medml.utils.figures import save_figure
from medml.utils.files import atomic_path, current_umask, write_text
from tests.engine.toy_pipeline import ToyPipeline


@pytest.fixture()
def umask():
    """Set a umask for one test and restore the session's afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_writes_follow_the_umask(umask, tmp_path, mask):
    umask(mask)
    assert current_umask() == mask
    write_text(tmp_path / "a.txt", "x")
    with atomic_path(tmp_path / "b.nii.gz") as tmp:
        tmp.write_bytes(b"x")
    save_figure(plt.figure(), tmp_path / "c.png")
    assert set(_modes(tmp_path).values()) == {0o666 & ~mask}


def test_predictions_and_conversions_are_readable_by_others_under_umask_022(umask, toy_run, tmp_path):
    umask(0o022)
    pipeline, module = load_checkpoint(toy_run.checkpoint)
    clinical = ToyPipeline().synthesize_clinical(tmp_path / "clinical")
    predict_folder(pipeline, module, clinical, tmp_path / "out", progress=False)
    io.convert(get_testdata_file("CT_small.dcm"), tmp_path / "out" / "ct.nii.gz")
    modes = _modes(tmp_path / "out")
    assert {"predictions.csv", "failures.csv", "run.json", "case0/prediction.txt", "ct.nii.gz"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}
    dirs = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*") if p.is_dir()}
    assert dirs == {0o755}
