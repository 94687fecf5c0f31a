"""The metrics the ECG evaluation reports, against scikit-learn / scipy or hand computation: weighted AUROC,
calibration fits (temperature, Platt), Brier, ECE and reliability bins, thresholds with a minimum of positives,
sensitivity/specificity intervals, the record bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from medml.metrics import multilabel_auroc, per_label_f1_thresholds
from medml.metrics.calibration import (
    brier_scores,
    expected_calibration_error,
    fit_platt,
    fit_temperature,
    reliability_bins,
)
from medml.metrics.classification import bootstrap_ci, sensitivity_specificity


@pytest.fixture(scope="module")
def multilabel():
    rng = np.random.default_rng(0)
    y = (rng.random((600, 5)) < [0.5, 0.2, 0.05, 0.3, 0.1]).astype(int)
    logits = 1.5 * (2 * y - 1) + rng.standard_normal(y.shape)
    return y, logits


def test_weighted_auroc_equals_sklearn(multilabel):
    y, logits = multilabel
    res = multilabel_auroc(y, logits, n_bootstrap=200)
    assert res["weighted"] == pytest.approx(roc_auc_score(y, logits, average="weighted"), abs=1e-9)
    assert res["macro"] == pytest.approx(roc_auc_score(y, logits, average="macro"), abs=1e-9)
    lo, hi = res["weighted_ci"]
    assert lo < res["weighted"] < hi and hi - lo < 0.1


def test_temperature_and_platt_recover_a_known_miscalibration():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 2, size=(20000, 2))
    y = (rng.random(true_logit.shape) < 1 / (1 + np.exp(-true_logit))).astype(int)
    scale = fit_temperature(3.0 * true_logit, y)  # over-confident by a factor 3: T = 3
    np.testing.assert_allclose(scale, [1 / 3, 1 / 3], rtol=0.05)
    a, b = fit_platt(2.0 * true_logit - 1.0, y)  # sigmoid(a z + b) = sigmoid(true): a = 0.5, b = 0.5
    np.testing.assert_allclose(a, [0.5, 0.5], rtol=0.05)
    np.testing.assert_allclose(b, [0.5, 0.5], atol=0.05)
    # a label with too few positives keeps the identity
    y_rare = np.zeros_like(y)
    y_rare[0, 0] = 1
    assert fit_temperature(true_logit, y_rare, min_positives=5).tolist() == [1.0, 1.0]


def test_brier_ece_and_reliability_bins_against_sklearn(multilabel):
    y, logits = multilabel
    p = 1 / (1 + np.exp(-logits))
    per_label = brier_scores(y, p)["per_label"]
    np.testing.assert_allclose(per_label, [brier_score_loss(y[:, c], p[:, c]) for c in range(y.shape[1])])
    bins = reliability_bins(y, p, n_bins=10)
    frac, mean = calibration_curve(y.ravel(), p.ravel(), n_bins=10, strategy="uniform")
    np.testing.assert_allclose(bins["fraction_positive"], frac)
    np.testing.assert_allclose(bins["mean_predicted"], mean)
    assert bins["count"].sum() == y.size
    # ECE by hand: count-weighted gap
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p.ravel(), edges[1:-1]), 0, 9)
    gaps = [
        abs(y.ravel()[which == k].mean() - p.ravel()[which == k].mean()) * (which == k).sum()
        for k in range(10)
        if (which == k).any()
    ]
    assert expected_calibration_error(y, p) == pytest.approx(sum(gaps) / y.size)
    perfect = np.full((1000, 1), 0.3)
    assert expected_calibration_error((np.arange(1000) % 10 < 3)[:, None], perfect) == pytest.approx(0.0, abs=1e-12)


def test_thresholds_need_a_minimum_of_positives(multilabel):
    y, logits = multilabel
    p = 1 / (1 + np.exp(-logits))
    own = per_label_f1_thresholds(y, p, fallback=0.42, min_positives=1)
    strict = per_label_f1_thresholds(y, p, fallback=0.42, min_positives=50)
    few = y.sum(0) < 50
    assert few.any() and (~few).any()
    assert np.all(strict[few] == np.float32(0.42)) and np.array_equal(strict[~few], own[~few])
    assert not np.all(own[few] == np.float32(0.42))


def test_sensitivity_specificity_wilson_intervals():
    y = np.array([1] * 20 + [0] * 80)
    d = np.array([1] * 15 + [0] * 5 + [1] * 8 + [0] * 72)
    res = sensitivity_specificity(y, d)
    assert (res["sensitivity"], res["specificity"]) == (0.75, 0.9)

    def wilson(k, n, z=1.959963984540054):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return centre - half, centre + half

    np.testing.assert_allclose(res["sensitivity_ci"], wilson(15, 20), atol=1e-9)
    np.testing.assert_allclose(res["specificity_ci"], wilson(72, 80), atol=1e-9)
    assert np.isnan(sensitivity_specificity(np.zeros(5), np.zeros(5))["sensitivity"])


def test_bootstrap_ci_brackets_the_statistic():
    x = np.random.default_rng(2).normal(1.0, 1.0, 400)
    lo, hi = bootstrap_ci(np.mean, x, n_bootstrap=300)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)
