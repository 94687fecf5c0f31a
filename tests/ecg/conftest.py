"""Shared ECG fixtures: one synthetic PTB-XL per test session and a cache folder inside the session's tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medml.data.synthetic_ptbxl import write_synthetic_ptbxl

SYNTHETIC_RECORDS = 360  # ~36 per fold: enough positives of every learnable code in folds 9 and 10


@pytest.fixture(scope="session")
def synthetic_ptbxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic PTB-XL (official layout, 100 Hz records only) written once per session; returns its folder."""
    return write_synthetic_ptbxl(tmp_path_factory.mktemp("ptbxl") / "ptb-xl", n_records=SYNTHETIC_RECORDS, seed=0)


@pytest.fixture(scope="session")
def ptbxl_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A PTB-XL cache folder under tmp; medml's cache root points there too, so default-cache code stays in tmp."""
    base = tmp_path_factory.mktemp("medml-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(base))
        yield base / "medml" / "ptbxl"
