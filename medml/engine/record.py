"""``run.json``: the provenance record written beside every training run, prediction and evaluation."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import medml
from medml.config import REPO_ROOT

_PACKAGES = ("torch", "lightning", "monai", "numpy", "pydicom", "SimpleITK", "nibabel", "wfdb", "highdicom")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"medml": medml.__version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the medml source tree, when it is a git checkout (with ``+dirty`` for local changes)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def base_record(kind: str, pipeline: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "pipeline": pipeline,
        "started": now(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "host": platform.node(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        **fields,
    }
