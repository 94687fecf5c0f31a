"""medml: published medical imaging methods on clinical files, on one shared engine."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(model: Any, device: str = "auto", overrides: list[str] | None = None, pipeline: str | None = None) -> Any:
    """``medml.load(file_or_url_or_hub_id)`` -> a `medml.api.Predictor` (torch is imported here, not by
    ``import medml``, so the command line's ``list`` and ``--help`` stay fast)."""
    from medml.api import load as _load

    return _load(model, device=device, overrides=overrides, pipeline=pipeline)
