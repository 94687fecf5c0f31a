"""The REFUGE / REFUGE2 challenge metrics, re-implemented from the official evaluation code's definitions.

The organisers' evaluator (``refuge-evaluation``) no longer runs on a current NumPy/SciPy (``np.bool``,
``scipy.misc.imread``), so the definitions are written again here and tested against hand-computed cases:

* classification: ``AUC`` (scikit-learn's ``roc_auc_score``) and the *reference sensitivity*, the ROC's sensitivity
  at specificity 0.85 by linear interpolation (SciPy ``interp1d`` of sensitivity over specificity = 1 - FPR);
* segmentation on challenge masks (0 cup, 128 rim, 255 background): cup Dice on ``mask == 0``, disc Dice on
  ``mask < 255`` (disc = rim + cup), Dice = 2|A∩B| / (|A| + |B|);
* vCDR = vertical cup diameter / (vertical disc diameter + 1e-7), the vertical diameter of a structure being the
  largest number of its pixels in one image column (not its top-to-bottom extent); reported as the MAE over images;
* fovea: mean Euclidean distance in pixels of the original image;
* leaderboard (REFUGE 2018): segmentation score = 0.35 rank(cup Dice) + 0.25 rank(disc Dice) + 0.40 rank(vCDR MAE)
  with 0-based ranks; final = 0.6 segmentation rank + 0.4 classification (AUC) rank, both 1-based; lower is better.
  REFUGE2's own weighting was not published (spec B4), so only the 2018 rule is implemented.

Label maps inside medml are {0 background, 1 rim, 2 cup}; the functions below take either form through the
``encoding`` argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from scipy.interpolate import interp1d
from sklearn.metrics import roc_auc_score, roc_curve

EPS = 1e-7
REFERENCE_SPECIFICITY = 0.85
Encoding = Literal["labels", "challenge"]

__all__ = [
    "REFERENCE_SPECIFICITY",
    "classification_metrics",
    "cup_disc_masks",
    "dice",
    "fovea_distance",
    "refuge_leaderboard",
    "segmentation_metrics",
    "sensitivity_at_specificity",
    "vcdr",
    "vertical_diameter",
]


def cup_disc_masks(mask: np.ndarray, encoding: Encoding = "labels") -> tuple[np.ndarray, np.ndarray]:
    """(cup, disc) boolean masks; disc includes the cup. ``labels``: {0 bg, 1 rim, 2 cup}; ``challenge``: the
    BMP values (0 cup, 128 rim, 255 background; the official code's ``== 0`` and ``< 255``)."""
    mask = np.asarray(mask)
    if mask.ndim == 3:  # an RGB BMP: the official evaluator reads channel 0
        mask = mask[..., 0]
    if encoding == "challenge":
        return mask == 0, mask < 255
    return mask == 2, mask > 0


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|) of two boolean masks; NaN when both are empty (the official code divides by zero)."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    total = float(pred.sum() + target.sum())
    if total == 0:
        return float("nan")
    return 2.0 * float(np.logical_and(pred, target).sum()) / total


def vertical_diameter(mask: np.ndarray) -> float:
    """Largest number of foreground pixels in one column (the official "vertical diameter")."""
    mask = np.asarray(mask, dtype=bool)
    return float(mask.sum(axis=0).max()) if mask.size else 0.0


def vcdr(mask: np.ndarray, encoding: Encoding = "labels") -> float:
    """Vertical cup-to-disc ratio as the official code computes it (column-count diameters, ε = 1e-7)."""
    cup, disc = cup_disc_masks(mask, encoding)
    return vertical_diameter(cup) / (vertical_diameter(disc) + EPS)


def segmentation_metrics(pred: np.ndarray, target: np.ndarray, encoding: Encoding = "labels") -> dict[str, float]:
    """Per-image ``cup_dice``, ``disc_dice``, ``vcdr_pred``, ``vcdr_gt`` and ``vcdr_ae`` (absolute error)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape[:2] != target.shape[:2]:
        raise ValueError(f"prediction {pred.shape[:2]} and reference {target.shape[:2]} differ in size")
    cup_p, disc_p = cup_disc_masks(pred, encoding)
    cup_t, disc_t = cup_disc_masks(target, encoding)
    v_pred, v_gt = vcdr(pred, encoding), vcdr(target, encoding)
    return {
        "cup_dice": dice(cup_p, cup_t),
        "disc_dice": dice(disc_p, disc_t),
        "vcdr_pred": v_pred,
        "vcdr_gt": v_gt,
        "vcdr_ae": abs(v_pred - v_gt),
    }


def sensitivity_at_specificity(
    labels: Sequence[int], scores: Sequence[float], specificity: float = REFERENCE_SPECIFICITY
) -> float:
    """Sensitivity at ``specificity``, linearly interpolated on the ROC points (the official reference
    sensitivity): ``interp1d(1 - fpr, tpr)(specificity)`` over scikit-learn's ``roc_curve`` points."""
    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    return float(interp1d(1.0 - fpr, tpr)(specificity))


def classification_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    """``auc`` and ``sensitivity_at_85_specificity``; NaN for both when only one class is present."""
    labels = (np.asarray(labels) > 0).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        return {"auc": float("nan"), "sensitivity_at_85_specificity": float("nan")}
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "sensitivity_at_85_specificity": sensitivity_at_specificity(labels, scores),
    }


def fovea_distance(pred_xy: np.ndarray, true_xy: np.ndarray) -> np.ndarray:
    """Euclidean distance per image between (N, 2) predicted and reference (x, y) fovea positions, in pixels."""
    pred_xy, true_xy = np.asarray(pred_xy, dtype=np.float64), np.asarray(true_xy, dtype=np.float64)
    return np.sqrt(((pred_xy - true_xy) ** 2).sum(axis=-1))


def _order(values: np.ndarray, best: Literal["highest", "lowest"]) -> np.ndarray:
    """0-based rank of each entry (0 is best). Ties: ascending stable order, reversed for ``highest`` (what the
    official code's reversed ``argsort`` gives on small tables)."""
    order = np.argsort(values, kind="stable")
    if best == "highest":
        order = order[::-1]
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(len(values))
    return ranks


def refuge_leaderboard(results: Mapping[str, Mapping[str, float]]) -> list[dict[str, float | str]]:
    """REFUGE-2018 ranking of several result sets (teams or models).

    Args:
        results: ``{team: {"cup_dice", "disc_dice", "vcdr_mae", "auc"}}`` (means over the test set).

    Returns:
        One row per team, best first: ``team``, ``score`` (0.6 seg rank + 0.4 cls rank), ``segmentation_score``
        (0.35/0.25/0.40-weighted 0-based metric ranks), ``segmentation_rank`` and ``classification_rank``
        (1-based), and the four inputs.
    """
    teams = list(results)
    if not teams:
        return []
    col = {k: np.array([float(results[t][k]) for t in teams]) for k in ("cup_dice", "disc_dice", "vcdr_mae", "auc")}
    seg_score = (
        0.35 * _order(col["cup_dice"], "highest")
        + 0.25 * _order(col["disc_dice"], "highest")
        + 0.40 * _order(col["vcdr_mae"], "lowest")
    )
    seg_rank = _order(seg_score, "lowest") + 1
    cls_rank = _order(col["auc"], "highest") + 1
    final = 0.6 * seg_rank + 0.4 * cls_rank
    rows = [
        {
            "team": t,
            "score": float(final[i]),
            "segmentation_score": float(seg_score[i]),
            "segmentation_rank": int(seg_rank[i]),
            "classification_rank": int(cls_rank[i]),
            **{k: float(col[k][i]) for k in col},
        }
        for i, t in enumerate(teams)
    ]
    order = np.argsort(final, kind="stable")
    return [rows[i] for i in order]
