"""Fixtures shared across test folders."""

import pytest
import torch

from tests.engine.toy_pipeline import ToyPipeline

# The suite runs as 2 pytest-xdist workers on 2 cores: one torch thread each avoids oversubscription, which
# slows small CPU models by up to 10x.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    """medml's cache (e.g. the PTB-XL signal cache) goes to the session's tmp dir, never to the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    return ToyPipeline().synthesize(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory, toy_data):
    """One finished toy training run, shared by the tests that only read it."""
    from medml.engine.train import train

    return train(ToyPipeline(), toy_data, tmp_path_factory.mktemp("toyrun") / "run")
