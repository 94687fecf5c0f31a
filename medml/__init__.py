"""medml: published medical imaging methods on clinical files, on one shared engine."""

__version__ = "0.1.0"
