"""The CPU and CUDA images build and answer ``--version``, ``list`` and ``info``.

Building downloads PyTorch and medml's dependencies, so it runs only where ``docker`` works and
``MEDML_DOCKER_TESTS=1`` asks for it (CI with docker and network); skipped otherwise.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import medml

REPO = Path(__file__).resolve().parents[1]


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = pytest.mark.skipif(
    os.environ.get("MEDML_DOCKER_TESTS") != "1" or not _docker_works(),
    reason="set MEDML_DOCKER_TESTS=1 on a machine with docker (and network) to build the images",
)


@pytest.mark.parametrize("dockerfile, tag", [("Dockerfile", "medml-test:cpu"), ("Dockerfile.cuda", "medml-test:cuda")])
def test_image_builds_and_runs(dockerfile, tag):
    build = subprocess.run(
        ["docker", "build", "-q", "-f", str(REPO / dockerfile), "-t", tag, str(REPO)], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr[-3000:]
    version = subprocess.run(["docker", "run", "--rm", tag, "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"medml {medml.__version__}"
    listed = subprocess.run(["docker", "run", "--rm", tag, "list"], capture_output=True, text=True)
    assert "ecg" in listed.stdout.split()
    info = subprocess.run(["docker", "run", "--rm", tag, "info"], capture_output=True, text=True)
    assert info.returncode == 0 and "torch" in info.stdout
