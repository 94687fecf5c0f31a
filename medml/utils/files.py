"""Atomic output files and folder fingerprints."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A killed or failing writer therefore never leaves a half-written output, and a resumed folder run can trust
    that every file it finds is complete. The temporary name keeps the suffix so writers that dispatch on the
    extension (nibabel, SimpleITK, OpenCV) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only (0600); give it the mode any tool would (0644 under umask 022).
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only read by setting)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def folder_fingerprint(root: str | Path, patterns: tuple[str, ...] = ("**/*",)) -> str:
    """SHA-256 over the sorted (relative path, size) of every file under ``root`` matching ``patterns``.

    Cheap enough for PTB-XL's 43k files (no content is read) and changes whenever a file is added, removed or
    resized, which is what a run record needs to tell two dataset copies apart.
    """
    root = Path(root)
    entries = sorted(
        {(p.relative_to(root).as_posix(), p.stat().st_size) for pat in patterns for p in root.glob(pat) if p.is_file()}
    )
    digest = hashlib.sha256()
    for rel, size in entries:
        digest.update(f"{rel}\0{size}\n".encode())
    return digest.hexdigest()


def cache_root() -> Path:
    """Where medml keeps derived data (never inside a user's dataset folder): ``$XDG_CACHE_HOME/medml``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medml"
