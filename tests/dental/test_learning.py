"""HierarchicalDet reaches the issue's quadrant AP50 >= 0.5 on synthetic DENTEX given ~10 CPU minutes (opt-in).

The tiny recipe's CPU minute (100 proposals, ~150 iterations) gives quadrant AP50 ~0.002. With 300 training
proposals and 1000 iterations (enumeration 200 + disease 800) at the tiny recipe's 128 x 256, training seeds 0 and 1
reach 0.68 (at 800 iterations) and 0.75 (model card, tiny section); with 100 proposals the same budget gave 0.1.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("MEDML_LONG_TESTS") != "1",
    reason="set MEDML_LONG_TESTS=1 to train the tiny model 1000 iterations with 300 proposals (~11 CPU minutes)",
)


def test_hierarchicaldet_reaches_quadrant_ap50_half_given_1000_iterations(tmp_path):
    from benchmarks.dental import learning_curve

    result = learning_curve("enumeration:200,diagnosis:800", 0, ["model.num_proposals=300"], tmp_path / "dentex")
    assert result["test_ap50"]["quadrant"] >= 0.5, result
