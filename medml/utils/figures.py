"""Figures for reports, evaluations and case outputs: one place that picks the backend and writes PNGs safely."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

# Headless for prediction on servers and in CI, unless a backend was chosen: Jupyter's kernel sets MPLBACKEND to
# its inline backend, and forcing Agg there would stop notebooks showing figures.
if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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


def per_label_auroc_figure(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of per-label AUROC with bootstrap 95% CIs, sorted, with the macro mean as a line.

    ``result`` is `medml.metrics.multilabel_auroc`'s output (``per_label`` with auroc, ci_lo, ci_hi, n_pos; ``macro``).
    """
    items = sorted(result["per_label"].items(), key=lambda kv: kv[1]["auroc"])
    many = len(items) > 30  # PTB-XL's 71 labels need smaller rows than CT-RATE's 18
    fig, ax = plt.subplots(figsize=(6.5, max(2.5, (0.16 if many else 0.22) * len(items) + 1)))
    if items:
        auc = np.array([v["auroc"] for _, v in items])
        lo = np.array([v["ci_lo"] for _, v in items])
        hi = np.array([v["ci_hi"] for _, v in items])
        err = np.nan_to_num(np.stack([auc - lo, hi - auc]), nan=0.0).clip(min=0)
        ax.barh(range(len(items)), auc, xerr=err, color="tab:blue", alpha=0.7, error_kw={"lw": 0.6})
        ax.set_yticks(range(len(items)))
        ax.set_yticklabels([f"{k} (n+={v['n_pos']})" for k, v in items], fontsize=6 if many else 7)
        ax.axvline(result["macro"], color="tab:red", lw=1, label=f"macro {result['macro']:.3f}")
        ax.axvline(0.5, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUROC (95% bootstrap CI)", fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=90)
