"""ECG figures on standard ECG paper, and the calibration figure.

Drawn with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot: importing or calling this module
never chooses or switches a backend, so notebooks keep theirs. Coordinates are millimetres of paper: 25 mm per
second, 10 mm per mV, 1 mm minor and 5 mm major grid, so a figure saved at its own size prints to scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medml.io.types import STANDARD_LEADS
from medml.utils.files import atomic_path

MM_PER_S = 25.0  # paper speed
MM_PER_MV = 10.0  # gain
#: The standard 3 x 4 layout: row r, column k shows lead LAYOUT[r][k] over seconds 2.5k..2.5(k+1).
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
ROW_MM = 30.0  # baseline-to-baseline distance of the rows
LEFT_MM = 8.0  # room for the 1 mV calibration pulse
COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG through `atomic_path` (no half-written file on a crash)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def paper_grid(ax, width_mm: float, height_mm: float) -> None:
    """Pink 1 mm / red 5 mm grid over ``[0, width] x [0, height]`` mm, equal aspect, no ticks."""
    minor = np.arange(0.0, width_mm + 0.01, 1.0)
    ax.vlines(minor, 0, height_mm, colors="#f4c2c2", lw=0.3, zorder=0)
    ax.vlines(minor[::5], 0, height_mm, colors="#e88080", lw=0.6, zorder=0)
    rows = np.arange(0.0, height_mm + 0.01, 1.0)
    ax.hlines(rows, 0, width_mm, colors="#f4c2c2", lw=0.3, zorder=0)
    ax.hlines(rows[::5], 0, width_mm, colors="#e88080", lw=0.6, zorder=0)
    ax.set_xlim(0, width_mm)
    ax.set_ylim(0, height_mm)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def _pulse(ax, x0: float, y0: float) -> None:
    """The 1 mV, 0.2 s calibration pulse at the start of a row."""
    w = 0.2 * MM_PER_S
    ax.plot(
        [x0, x0 + 1, x0 + 1, x0 + 1 + w, x0 + 1 + w, x0 + 2 + w],
        [y0, y0, y0 + MM_PER_MV, y0 + MM_PER_MV, y0, y0],
        color="black",
        lw=0.8,
    )


def twelve_lead_paper(
    ax,
    signal: np.ndarray,
    fs: float,
    leads: Sequence[str] = STANDARD_LEADS,
    spans: Sequence[dict[str, Any]] = (),
    strip_spans: Sequence[dict[str, Any]] = (),
    lead_font: float = 8.0,
) -> float:
    """The 12-lead ECG on paper: 3 x 4 leads (2.5 s each) and a 10-s lead II rhythm strip below.

    ``spans``: time ranges ``{"t0", "t1", "colour", "alpha"}`` (seconds) shaded over every lead panel that shows
    them and over the rhythm strip; ``strip_spans`` shade the rhythm strip only (e.g. per-window contributions).
    Returns the paper height in mm.
    """
    seconds = signal.shape[1] / fs
    panel_s = seconds / 4
    width = LEFT_MM + seconds * MM_PER_S + 2
    height = ROW_MM * (len(LAYOUT) + 1) + 6
    paper_grid(ax, width, height)
    index = {lead: i for i, lead in enumerate(leads)}
    t = np.arange(signal.shape[1]) / fs
    baselines = [height - ROW_MM * (r + 0.6) for r in range(len(LAYOUT) + 1)]
    for span in spans:
        for y in baselines:
            x0, x1 = LEFT_MM + span["t0"] * MM_PER_S, LEFT_MM + span["t1"] * MM_PER_S
            ax.add_patch(_rect(x0, y - ROW_MM / 2, x1 - x0, ROW_MM, span["colour"], span.get("alpha", 0.25)))
    for span in strip_spans:
        y = baselines[-1]
        x0, x1 = LEFT_MM + span["t0"] * MM_PER_S, LEFT_MM + span["t1"] * MM_PER_S
        ax.add_patch(_rect(x0, y - ROW_MM / 2, x1 - x0, ROW_MM, span["colour"], span.get("alpha", 0.25)))
    for r, row in enumerate(LAYOUT):
        y0 = baselines[r]
        _pulse(ax, 1.0, y0)
        for k, lead in enumerate(row):
            sel = (t >= k * panel_s) & (t < (k + 1) * panel_s)
            ax.plot(LEFT_MM + t[sel] * MM_PER_S, y0 + signal[index[lead], sel] * MM_PER_MV, color="black", lw=0.6)
            ax.text(LEFT_MM + k * panel_s * MM_PER_S + 1, y0 + 9, lead, fontsize=lead_font, fontweight="bold")
            if k:
                ax.vlines(LEFT_MM + k * panel_s * MM_PER_S, y0 - 3, y0 + 3, colors="black", lw=0.8)
    y0 = baselines[-1]
    _pulse(ax, 1.0, y0)
    ax.plot(LEFT_MM + t * MM_PER_S, y0 + signal[index[RHYTHM_LEAD]] * MM_PER_MV, color="black", lw=0.6)
    ax.text(LEFT_MM + 1, y0 + 9, f"{RHYTHM_LEAD} (rhythm)", fontsize=lead_font, fontweight="bold")
    ax.text(width - 1, 1, "25 mm/s, 10 mm/mV", fontsize=lead_font - 1, ha="right", va="bottom")
    return height


def segment_paper(
    ax,
    segment: np.ndarray,
    fs: float,
    t0: float,
    leads: Sequence[str] = STANDARD_LEADS,
    colour: str = "black",
    lead_font: float = 7.0,
) -> float:
    """A prototype's training segment on paper at the same scale: a short segment (under 2.5 s) in the 3 x 4
    layout (each lead the whole segment); a 10-s one as its lead II strip. Returns the width in mm."""
    index = {lead: i for i, lead in enumerate(leads)}
    seconds = segment.shape[1] / fs
    t = np.arange(segment.shape[1]) / fs
    if seconds < 2.5:
        col = seconds * MM_PER_S + 4
        width, height = col * 4, ROW_MM * len(LAYOUT)
        paper_grid(ax, width, height)
        for r, row in enumerate(LAYOUT):
            y0 = height - ROW_MM * (r + 0.6)
            for k, lead in enumerate(row):
                ax.plot(k * col + 2 + t * MM_PER_S, y0 + segment[index[lead]] * MM_PER_MV, color=colour, lw=0.7)
                ax.text(k * col + 2, y0 + 9, lead, fontsize=lead_font, fontweight="bold")
        ax.text(width - 1, 1, f"{t0:.2f}-{t0 + seconds:.2f} s", fontsize=lead_font - 1, ha="right")
        return width
    width, height = seconds * MM_PER_S + 2, ROW_MM
    paper_grid(ax, width, height)
    y0 = height * 0.45
    ax.plot(1 + t * MM_PER_S, y0 + segment[index[RHYTHM_LEAD]] * MM_PER_MV, color=colour, lw=0.7)
    ax.text(2, y0 + 9, f"{RHYTHM_LEAD} (whole record)", fontsize=lead_font, fontweight="bold")
    return width


def _rect(x: float, y: float, w: float, h: float, colour: str, alpha: float) -> Rectangle:
    return Rectangle((x, y), w, h, facecolor=colour, alpha=alpha, edgecolor="none", zorder=0.5)


def reliability_figure(data: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Reliability diagram over every (record, label) pair: observed positive rate against mean predicted
    probability per bin, raw and calibrated, with the ECE of each; bin counts below."""
    fig = Figure(figsize=(5.0, 5.6))
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax, hist = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    for key, colour in (("raw", "tab:red"), ("calibrated", "tab:blue")):
        bins = data[key]
        ax.plot(
            bins["mean_predicted"],
            bins["fraction_positive"],
            "o-",
            color=colour,
            ms=3,
            lw=1,
            label=f"{key} (ECE {data[f'ece_{key}']:.3f})",
        )
        hist.bar(bins["mean_predicted"], bins["count"], width=0.04, color=colour, alpha=0.5, label=key)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability", fontsize=8)
    ax.set_ylabel("observed positive rate", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)
    hist.set_yscale("log")
    hist.set_xlim(0, 1)
    hist.set_xlabel("predicted probability (bin)", fontsize=8)
    hist.set_ylabel("pairs", fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi=90)
