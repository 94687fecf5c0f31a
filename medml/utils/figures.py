"""Figures for reports, evaluations and case outputs: made without pyplot and written as PNGs safely.

Library figures are plain `matplotlib.figure.Figure` objects: they never touch pyplot's global state or switch the
user's backend (a notebook keeps its inline plots, a desktop script its GUI), and they render headless on a server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medml.utils.files import atomic_path


def figure(**kwargs: Any) -> Figure:
    """A new figure outside pyplot (``figsize``, ``dpi``, ...); draw on ``fig.subplots(...)``."""
    return Figure(**kwargs)


def save_figure(fig: Figure, path: str | Path, dpi: int = 100, tight: bool = True) -> Path:
    """Lay out ``fig`` and write it as PNG through `atomic_path` (no half-written file on a crash)."""
    path = Path(path)
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    if fig.canvas.manager is not None:  # made through pyplot (a notebook's own figure): let pyplot forget it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def per_label_auroc_figure(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of per-label AUROC with bootstrap 95% CIs, sorted, with the macro mean as a line.

    ``result`` is `medml.metrics.multilabel_auroc`'s output (``per_label`` with auroc, ci_lo, ci_hi, n_pos; ``macro``).
    """
    items = sorted(result["per_label"].items(), key=lambda kv: kv[1]["auroc"])
    many = len(items) > 30  # PTB-XL's 71 labels need smaller rows than CT-RATE's 18
    fig = figure(figsize=(6.5, max(2.5, (0.16 if many else 0.22) * len(items) + 1)))
    ax = fig.subplots()
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
