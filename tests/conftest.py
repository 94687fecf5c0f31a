"""Fixtures shared across test folders."""

import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from medml.demo import DemoRun
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


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The session's shared ``medml-demo`` folder: one per test run, the same for every xdist worker."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return shared / "medml-demo"


@pytest.fixture(scope="session")
def tiny_demo(demo_root):
    """``tiny_demo(name)``: that pipeline's finished demo (synthetic data, tiny run, predictions, evaluation).

    Trained once per test session whichever worker asks first; the others wait on the lock and read it, so the
    demo test, the notebooks and the pipeline tests all share one tiny run per pipeline.
    """
    from medml.demo import run_pipeline_demo

    def get(name: str) -> DemoRun:
        demo_root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(demo_root.parent / f"medml-demo-{name}.lock")):
            return run_pipeline_demo(name, demo_root, progress=False)

    return get
