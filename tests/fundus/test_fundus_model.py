"""Post-processing between the fundus networks: cup ⊆ disc, largest components, the disc box, the heatmap peak."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medml.pipelines.fundus.model import disc_box, heatmap_peak, nested_labels
from medml.pipelines.fundus.module import gaussian_targets, vertical_diameters


def test_nested_labels_enforce_cup_inside_one_filled_disc():
    probs = np.zeros((3, 20, 20), np.float32)
    probs[0] = 1
    probs[:, 5:15, 4:14] = 0
    probs[1, 5:15, 4:14] = 1  # disc
    probs[1, 8:12, 7:11], probs[2, 8:12, 7:11] = 0.3, 0.7  # cup
    probs[1, 9, 9], probs[2, 9, 9] = 1.0, 0.0  # a hole in the cup
    probs[0, 0:2, 0:2], probs[2, 0:2, 0:2] = 0.0, 1.0  # a stray "cup" blob outside the disc
    labels = nested_labels(probs)
    assert labels[9, 9] == 2  # hole filled
    assert (labels[0:2, 0:2] == 0).all()  # not the largest component: dropped
    assert int((labels == 2).sum()) == 16 and int((labels > 0).sum()) == 100
    assert not ((labels == 2) & (labels == 0)).any()
    assert nested_labels(np.stack([np.ones((4, 4)), np.zeros((4, 4)), np.zeros((4, 4))])).max() == 0


def test_disc_box_takes_the_largest_component():
    mask = np.zeros((50, 50), bool)
    mask[10:20, 30:38] = True  # 10 tall, 8 wide
    mask[40:42, 0:2] = True
    cx, cy, diameter = disc_box(mask, 5)
    assert (cx, cy, diameter) == pytest.approx((33.5, 14.5, 10.0))
    assert disc_box(mask, 200) is None  # below the minimum size: no disc


def test_heatmap_peak_and_targets_agree():
    target = gaussian_targets(torch.tensor([[12.3, 7.6]]), 32, 2.0)[0].reshape(32, 32)
    assert float(target.sum()) == pytest.approx(1.0)
    x, y = heatmap_peak(np.log(target.numpy() + 1e-12))
    assert (x, y) == pytest.approx((12.3, 7.6), abs=0.35)


def test_vertical_diameters_are_column_counts():
    mask = torch.zeros(1, 6, 3, dtype=torch.bool)
    mask[0, [0, 4], 0] = True
    mask[0, 1:4, 1] = True
    assert vertical_diameters(mask).tolist() == [3.0]
