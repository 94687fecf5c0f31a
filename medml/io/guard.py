"""What every reader checks before it trusts a header: the memory a case will need, where the files it names lie,
and that whatever goes wrong inside a third-party decoder comes out as one `ReadError` line.

The memory budget is one process-wide setting: `set_memory_budget(bytes)`, else the environment variable
``MEDML_MAX_CASE_BYTES``, else a quarter of the machine's physical memory. Readers estimate a case's decoded size
from its header (voxels x item size, frames x height x width x channels) and refuse it above the budget before
allocating anything.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from medml.errors import ConfigError, CorruptFileError, MedmlError, OutsideInputError, ReadError, TooLargeError

BUDGET_ENV = "MEDML_MAX_CASE_BYTES"
FALLBACK_BUDGET = 4 * 1024**3  # where the physical memory cannot be asked
# deflate cannot expand data more than about 1032:1 (RFC 1951 blocks of 258-byte matches): a compressed stream
# shorter than this fraction of the bytes a header promises is truncated, whatever the decompressor would say.
DEFLATE_MAX_RATIO = 1032

_budget: int | None = None


def default_memory_budget() -> int:
    """A quarter of the physical memory (4 GiB where the system cannot tell)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4
    except (ValueError, OSError, AttributeError):
        return FALLBACK_BUDGET


def set_memory_budget(nbytes: int | None) -> None:
    """Set the largest decoded size (bytes) one case may have; None restores the default (env var or 1/4 RAM)."""
    global _budget
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0):
        raise ConfigError(f"memory budget must be a positive number of bytes, got {nbytes!r}")
    _budget = nbytes


def memory_budget() -> int:
    """The budget in force: `set_memory_budget`, else ``MEDML_MAX_CASE_BYTES``, else `default_memory_budget`."""
    if _budget is not None:
        return _budget
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        try:
            value = int(float(text))
        except (ValueError, OverflowError):
            value = 0
        if value <= 0:
            raise ConfigError(f"{BUDGET_ENV} must be a positive number of bytes, got {text!r}")
        return value
    return default_memory_budget()


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def check_memory(nbytes: int | float, what: str, path: str | Path | None) -> None:
    """Raise `TooLargeError` when ``what`` (e.g. "300 slices of 512x512 int16") needs more than the budget."""
    budget = memory_budget()
    if nbytes > budget:
        raise TooLargeError(
            f"{what} needs {format_bytes(nbytes)} in memory, above the budget of {format_bytes(budget)} "
            f"(raise it with --max-case-bytes, {BUDGET_ENV} or medml.io.set_memory_budget)",
            path,
        )


def check_compressed_size(compressed: int, needed: int, path: str | Path) -> None:
    """Refuse a deflate/gzip stream too short to hold ``needed`` bytes (a lying header) before inflating it."""
    if compressed * DEFLATE_MAX_RATIO < needed:
        raise CorruptFileError(
            f"truncated: the header promises {format_bytes(needed)} but {format_bytes(compressed)} of compressed "
            "data cannot hold that much",
            path,
        )


def contained(name: str, referrer: str | Path, what: str = "data file") -> Path:
    """The file ``name`` (as written inside ``referrer``) resolved against the referrer's folder, or
    `OutsideInputError` when it leaves that folder (``..``, an absolute path, or a link pointing out)."""
    referrer = Path(referrer)
    folder = referrer.parent.resolve()
    if "\x00" in name:
        raise OutsideInputError(f"{what} name contains a NUL byte", referrer)
    target = (referrer.parent / name).resolve()
    if target != folder and folder not in target.parents:
        raise OutsideInputError(f"{what} {name!r} lies outside the folder of {referrer.name}", referrer)
    return target


@contextlib.contextmanager
def reading(path: str | Path, what: str = "file") -> Iterator[None]:
    """Turn any exception a third-party decoder raises into a one-line `ReadError` naming the file.

    medml's own errors pass through (given ``path`` if they had none). The reason keeps the exception's type
    name, so a bug in medml that slips through (a TypeError, an IndexError) is still recognisable as one.
    """
    try:
        yield
    except MedmlError as exc:
        if exc.path is None:  # helpers that do not know the file raise without one
            exc.path = str(path)
        raise
    except RecursionError:
        raise CorruptFileError(f"cannot read {what}: nested too deeply (RecursionError)", path) from None
    except MemoryError:
        raise TooLargeError(f"cannot read {what}: out of memory while decoding (MemoryError)", path) from None
    except zlib.error as exc:
        raise CorruptFileError(f"cannot read {what}: damaged compressed data (zlib.error: {exc})", path) from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    # The decoders raise anything, and Rust ones panic with a BaseException (pyo3's PanicException); the type
    # name is kept in the reason.
    except BaseException as exc:
        text = " ".join(str(exc).split())[:200]
        raise ReadError(f"cannot read {what} ({type(exc).__name__}{': ' + text if text else ''})", path) from None
