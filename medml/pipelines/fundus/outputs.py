"""Clinical outputs of the ``fundus`` pipeline: the challenge submission files of one photograph, the DICOM SEG
segment table and the overlay figure an ophthalmologist reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D

from medml.data.refuge import write_challenge_mask
from medml.io import SegmentSpec, write_csv
from medml.utils.figures import figure, save_figure

RIM_COLOUR, CUP_COLOUR, FOVEA_COLOUR = (0, 200, 0), (30, 144, 255), (255, 215, 0)
CLASSIFICATION_HEADER = ("FileName", "Glaucoma Risk")  # official reader: column 1 name, column 2 score, header row
FOVEA_HEADER = ("FileName", "Fovea_X", "Fovea_Y")

# SEG segments. The category is SNOMED CT "Anatomical structure"; SNOMED codes for the neuroretinal rim and the
# optic cup were not verified, so the property types are medml-local codes in a private scheme ("99" prefix,
# DICOM PS3.3 8.2) rather than guessed SNOMED CT concepts.
SEGMENTS = (
    SegmentSpec(
        label=1,
        name="optic disc rim",
        category=("91723000", "SCT", "Anatomical Structure"),
        property_type=("FUNDUS-RIM", "99MEDML", "Neuroretinal rim of the optic disc"),
        color=RIM_COLOUR,
    ),
    SegmentSpec(
        label=2,
        name="optic cup",
        category=("91723000", "SCT", "Anatomical Structure"),
        property_type=("FUNDUS-CUP", "99MEDML", "Optic cup"),
        color=CUP_COLOUR,
    ),
)


def write_submission(
    out_dir: Path, file_name: str, labels: np.ndarray, probability: float, fovea: tuple[float, float]
) -> None:
    """``segmentation/<stem>.bmp`` (0 cup / 128 rim / 255 background, original size), ``classification_results.csv``
    and ``fovea_location_results.csv`` for one photograph, in the challenge's formats."""
    write_challenge_mask(labels, out_dir / "segmentation" / f"{Path(file_name).stem}.bmp")
    write_csv(
        [{CLASSIFICATION_HEADER[0]: file_name, CLASSIFICATION_HEADER[1]: round(probability, 6)}],
        out_dir / "classification_results.csv",
    )
    write_csv(
        [{FOVEA_HEADER[0]: file_name, FOVEA_HEADER[1]: round(fovea[0], 2), FOVEA_HEADER[2]: round(fovea[1], 2)}],
        out_dir / "fovea_location_results.csv",
    )


def _contour(ax: Any, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[np.array(colour) / 255], linewidths=1.5)


def overlay_figure(rgb: np.ndarray, result: dict[str, Any], path: Path, title: str = "", dpi: int = 100) -> Path:
    """Photograph with the disc (green) and cup (blue) contours and the fovea (yellow cross), next to a zoom on the
    disc; the title gives vCDR and glaucoma probability."""
    labels, (fx, fy) = result["labels"], result["fovea"]
    cx, cy, side = result["box"]
    fig = figure(figsize=(10, 5.2))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    for ax, zoom in zip(axes, (False, True), strict=True):
        ax.imshow(rgb)
        _contour(ax, labels > 0, RIM_COLOUR)
        _contour(ax, labels == 2, CUP_COLOUR)
        if zoom:
            half = side / 2
            ax.set_xlim(cx - half, cx + half)
            ax.set_ylim(cy + half, cy - half)
            ax.set_title("optic disc")
        else:
            ax.plot([fx], [fy], marker="+", color=np.array(FOVEA_COLOUR) / 255, markersize=14, mew=2)
            ax.set_title(title or "photograph")
        ax.axis("off")
    handles = [
        Line2D([], [], color=np.array(RIM_COLOUR) / 255, label="optic disc"),
        Line2D([], [], color=np.array(CUP_COLOUR) / 255, label="optic cup"),
        Line2D([], [], color=np.array(FOVEA_COLOUR) / 255, marker="+", linestyle="", markersize=10, label="fovea"),
    ]
    axes[1].legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.8)
    prob = result["probability"]
    fig.suptitle(
        f"vCDR {result['vcdr']:.2f}   glaucoma probability {prob:.2f}   "
        f"fovea ({fx:.0f}, {fy:.0f}) px   [research use only]",
        fontsize=12,
        color="darkred" if prob >= 0.5 else "black",
    )
    return save_figure(fig, path, dpi=dpi)
