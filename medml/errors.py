"""The medml error hierarchy.

Every error a user can cause (bad input file, wrong dataset layout, bad config, untrusted checkpoint) is a
`MedmlError`: its message is one line that names the file (or key) and the reason. The CLI prints it and exits
with code 2; folder runs record it in ``failures.csv`` and go on with the next case.
"""

from __future__ import annotations

from pathlib import Path


class MedmlError(Exception):
    """Base class: ``MedmlError(reason, path)`` prints as ``path: reason``."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = " ".join(str(reason).split())  # always one line
        self.path = None if path is None else str(path)
        super().__init__(self.reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ConfigError(MedmlError):
    """A wrong config key or value, or a missing file or folder named on the command line."""


class DataLayoutError(MedmlError):
    """A dataset folder that does not follow the official layout."""


class CheckpointError(MedmlError):
    """A checkpoint that cannot be trusted or does not match the pipeline."""


class ReadError(MedmlError):
    """An input file that cannot be read."""


class UnsupportedFormatError(ReadError):
    """Not a format medml reads (or not the kind this pipeline needs)."""


class CorruptFileError(ReadError):
    """Truncated or malformed file."""


class MissingDecoderError(ReadError):
    """Compressed data whose decoder package is not installed; the message names the package."""


class GeometryError(ReadError):
    """Inconsistent image geometry: uneven spacing, missing or duplicate slices, tilt, mixed sizes."""


class SignalError(ReadError):
    """A physiological signal that cannot be used: missing, NaN or flat leads, wrong length."""


class AbsurdSizeError(ReadError):
    """Dimensions or values outside any plausible range for the modality."""


class TooLargeError(AbsurdSizeError):
    """A case whose decoded pixels or samples would need more memory than the budget (`medml.io.set_memory_budget`)."""


class OutsideInputError(ReadError):
    """A file named inside another file (a WFDB signal file, an MHD/NRRD data file) that lies outside its folder."""
