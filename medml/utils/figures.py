"""Figures for reports, evaluations and case outputs: one place that picks the backend and writes PNGs safely."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: prediction runs on servers and in CI; notebooks still show figures inline
import matplotlib.pyplot as plt  # noqa: E402

from medml.utils.files import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 100, tight: bool = True) -> Path:
    """Lay out ``fig``, write it as PNG through `atomic_path` (no half-written file on a crash) and close it."""
    path = Path(path)
    try:
        if tight:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
