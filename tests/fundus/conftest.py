"""Shared fixtures of the fundus tests: one small synthetic REFUGE written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from medml.data.synthetic_refuge import write_synthetic_refuge


@pytest.fixture(scope="session")
def small_refuge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic REFUGE-2018 layout (6 train, 4 val, 4 test photographs). Read-only: copy it to modify it."""
    return write_synthetic_refuge(tmp_path_factory.mktemp("refuge") / "REFUGE", seed=3, n_train=6, n_val=4, n_test=4)
