"""medml.metrics against their reference implementations (scikit-learn, MONAI) on random inputs."""

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from monai.networks.utils import one_hot
from sklearn.metrics import f1_score, roc_auc_score

from medml.metrics import fmax, macro_auroc, multilabel_auroc, segmentation_scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((300, 9)) < rng.uniform(0.05, 0.5, 9)).astype(int)
    s = np.round(rng.random((300, 9)) + 0.4 * y, 1)  # rounding makes many ties
    y[:, 4] = 0  # a label with no positives is skipped, not scored
    result = multilabel_auroc(y, s, names=[f"L{i}" for i in range(9)], n_bootstrap=200, seed=seed)
    keep = [i for i in range(9) if i != 4]
    expected = [roc_auc_score(y[:, i], s[:, i]) for i in keep]
    assert result["macro"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert result["macro"] == pytest.approx(roc_auc_score(y[:, keep], s[:, keep], average="macro"), abs=1e-12)
    for i, auc in zip(keep, expected):
        entry = result["per_label"][f"L{i}"]
        assert entry["auroc"] == pytest.approx(auc, abs=1e-12)
        assert entry["ci_lo"] <= auc <= entry["ci_hi"]
    assert result["skipped"] == ["L4"]
    lo, hi = result["macro_ci"]
    assert lo < result["macro"] < hi and hi - lo < 0.2


def test_macro_auroc_is_sklearns_macro_over_scorable_labels_and_nan_when_empty():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 5)) < 0.3).astype(int)
    s = rng.random((200, 5)) + 0.5 * y
    y[:, 2] = 1  # one class only: not scorable, left out of the mean
    keep = [0, 1, 3, 4]
    assert macro_auroc(y, s) == pytest.approx(roc_auc_score(y[:, keep], s[:, keep], average="macro"), abs=1e-12)
    assert np.isnan(macro_auroc(np.zeros((0, 5)), np.zeros((0, 5))))


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2000):
        y = (rng.random((n, 3)) < 0.3).astype(int)
        s = rng.random((n, 3)) + 0.5 * y
        lo, hi = multilabel_auroc(y, s, n_bootstrap=300)["macro_ci"]
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_fmax_matches_a_brute_force_sklearn_search():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 6)) < 0.3).astype(int)
    p = np.clip(rng.random((200, 6)) * 0.7 + 0.3 * y, 0, 1)
    best, t = fmax(y, p)
    grid = np.round(np.arange(0, 1.0001, 0.01), 2)
    f1s = [f1_score(y.ravel(), (p >= th).astype(int).ravel()) for th in grid]
    assert best == pytest.approx(max(f1s), abs=1e-12)
    assert t == pytest.approx(grid[int(np.argmax(f1s))])


def test_segmentation_scores_match_monai():
    rng = np.random.default_rng(0)
    target = np.zeros((64, 64), int)
    target[10:30, 10:40] = 1
    target[40:60, 5:20] = 2
    pred = target.copy()
    pred[12:33, 8:40] = 1
    pred[rng.random((64, 64)) < 0.02] = 2
    scores = segmentation_scores(pred, target, num_classes=3, spacing=(0.5, 0.5), class_names=["bg", "a", "b"])
    p1 = one_hot(torch.as_tensor(pred)[None, None], 3, dim=1)
    t1 = one_hot(torch.as_tensor(target)[None, None], 3, dim=1)
    dice = compute_dice(p1, t1, include_background=True)[0]
    iou = compute_iou(p1, t1, include_background=True)[0]
    hd = compute_hausdorff_distance(p1, t1, include_background=True, percentile=95, spacing=(0.5, 0.5))[0]
    for c, name in [(1, "a"), (2, "b")]:
        assert scores[name]["dice"] == pytest.approx(float(dice[c]), abs=1e-6)
        assert scores[name]["iou"] == pytest.approx(float(iou[c]), abs=1e-6)
        assert scores[name]["hd95"] == pytest.approx(float(hd[c]), abs=1e-6)
    assert "bg" not in scores
    assert scores["mean"]["dice"] == pytest.approx(float(dice[1:].mean()), abs=1e-6)


def test_segmentation_absent_classes_and_ignore_index():
    target = np.zeros((32, 32), int)
    target[5:15, 5:15] = 1
    target[20:25, 20:25] = 255  # ignored pixels
    pred = target.copy()
    pred[20:25, 20:25] = 2  # predicted class 2 only where the target is ignored -> not penalised
    s = segmentation_scores(pred, target, num_classes=4, ignore_index=255)
    assert s["class_1"]["dice"] == pytest.approx(1.0)
    assert np.isnan(s["class_2"]["dice"]) and not s["class_2"]["present"]
    assert np.isnan(s["class_3"]["dice"])
    assert s["mean"]["dice"] == pytest.approx(1.0)
    clean = np.where(target == 255, 0, target)
    pred2 = clean.copy()
    pred2[0:3, 0:3] = 3  # a false-positive class absent from the target scores 0
    s2 = segmentation_scores(pred2, clean, num_classes=4)
    assert s2["class_3"]["dice"] == 0.0 and s2["mean"]["dice"] == pytest.approx(0.5)
