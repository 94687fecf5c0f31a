"""Shared fixtures of the angio tests: one small synthetic MOSXAV written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from medml.data.synthetic_mosxav import write_synthetic_mosxav


@pytest.fixture(scope="session")
def synthetic_mosxav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MOSXAV (8 trainval videos -> 5 train / 3 val, 3 test videos; 20 frames of 128x128 each).

    Training videos are annotated on frames 0, 5, 10, 15; test videos on every frame. Read-only: tests that
    modify a layout must copy it first.
    """
    root = tmp_path_factory.mktemp("mosxav") / "MOSXAV"
    return write_synthetic_mosxav(root, n_trainval=8, n_test=3, n_frames=20, size=128, seed=0)
