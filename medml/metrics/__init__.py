"""Metrics, each a thin layer over a reference implementation (scikit-learn, MONAI) and tested against it."""

from medml.metrics.classification import fmax, multilabel_auroc
from medml.metrics.segmentation import segmentation_scores

__all__ = ["fmax", "multilabel_auroc", "segmentation_scores"]
