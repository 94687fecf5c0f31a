"""Metrics, each a thin layer over a reference implementation (scikit-learn, MONAI) or a re-implementation of an
official evaluator (REFUGE), and tested against it or against hand-computed cases."""

from medml.metrics.classification import fmax, macro_auroc, multilabel_auroc, per_label_f1_thresholds
from medml.metrics.refuge import refuge_leaderboard, vcdr
from medml.metrics.segmentation import segmentation_scores

__all__ = [
    "fmax",
    "macro_auroc",
    "multilabel_auroc",
    "per_label_f1_thresholds",
    "refuge_leaderboard",
    "segmentation_scores",
    "vcdr",
]
