"""Probability calibration: per-label temperature or Platt scaling fitted on a validation set, Brier score,
expected calibration error and reliability-diagram data.

Brier score is scikit-learn's ``brier_score_loss`` per label; the reliability bins follow
``sklearn.calibration.calibration_curve(strategy="uniform")`` (same bins, tested) and add the bin counts ECE needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss


def fit_temperature(
    logits: np.ndarray, y_true: np.ndarray, min_positives: int = 1, bounds: tuple[float, float] = (0.05, 20.0)
) -> np.ndarray:
    """One temperature per label minimising the label's binary cross-entropy of ``sigmoid(logit / T)``.

    Returns the (C,) scales ``1 / T``. Labels with fewer than ``min_positives`` positives (or no negative) keep
    T = 1: with one class only, the likelihood is maximised by an infinitely sharp or flat sigmoid.
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor((np.asarray(y_true) > 0.5).astype(np.float64))
    n_pos = y.sum(0)
    fit = (n_pos >= max(1, min_positives)) & (n_pos < len(y))
    log_t = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")
    lo, hi = np.log(bounds[0]), np.log(bounds[1])

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        scaled = z / torch.exp(log_t.clamp(lo, hi))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scaled, y, reduction="none").mean(0)
        total = loss[fit].sum()
        total.backward()
        return total

    if fit.any():
        optimiser.step(closure)
    temperature = torch.exp(log_t.detach().clamp(lo, hi))
    temperature[~fit] = 1.0
    return (1.0 / temperature).numpy()


def fit_platt(logits: np.ndarray, y_true: np.ndarray, min_positives: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Platt scaling per label: ``sigmoid(a * logit + b)`` by logistic regression (scikit-learn, almost no
    regularisation). Returns (a, b); labels with too few positives keep (1, 0); ``a`` is kept positive so the
    ranking (and so AUROC) of a label never flips."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true) > 0.5
    a, b = np.ones(z.shape[1]), np.zeros(z.shape[1])
    for c in range(z.shape[1]):
        pos = int(y[:, c].sum())
        if pos < max(1, min_positives) or pos == len(y):
            continue
        model = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, c : c + 1], y[:, c])
        a[c], b[c] = max(float(model.coef_[0, 0]), 1e-3), float(model.intercept_[0])
    return a, b


def brier_scores(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Brier score per label (``sklearn.metrics.brier_score_loss``) and their mean over labels."""
    y = np.asarray(y_true) > 0.5
    p = np.asarray(probs, dtype=np.float64)
    per_label = np.array([brier_score_loss(y[:, c], p[:, c], pos_label=True) for c in range(y.shape[1])])
    return {"mean": float(per_label.mean()) if per_label.size else float("nan"), "per_label": per_label}


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Reliability-diagram data over every (record, label) pair: equal-width bins of predicted probability with
    their mean prediction, observed positive rate and count (empty bins are dropped, as in ``calibration_curve``)."""
    y = (np.asarray(y_true) > 0.5).ravel().astype(np.float64)
    p = np.asarray(probs, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], p, side="right")  # calibration_curve's binning
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(which, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(which, weights=y, minlength=n_bins) / count
    keep = count > 0
    return {"mean_predicted": mean_pred[keep], "fraction_positive": frac_pos[keep], "count": count[keep]}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap |observed rate - mean prediction| over `reliability_bins`."""
    bins = reliability_bins(y_true, probs, n_bins)
    if not bins["count"].sum():
        return float("nan")
    gap = np.abs(bins["fraction_positive"] - bins["mean_predicted"])
    return float((gap * bins["count"]).sum() / bins["count"].sum())


def calibration_summary(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """Mean Brier score and ECE of a multi-label prediction."""
    return {"brier": brier_scores(y_true, probs)["mean"], "ece": expected_calibration_error(y_true, probs, n_bins)}


__all__ = [
    "brier_scores",
    "calibration_summary",
    "expected_calibration_error",
    "fit_platt",
    "fit_temperature",
    "reliability_bins",
]
