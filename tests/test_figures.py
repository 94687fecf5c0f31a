"""medml's figure module picks a headless backend, but never overrides one the user or Jupyter chose."""

import os
import subprocess
import sys

import pytest

SHOW_BACKEND = "import medml.utils.figures, matplotlib; print(matplotlib.get_backend().lower())"


@pytest.mark.parametrize(
    "chosen, expected", [(None, "agg"), ("module://matplotlib_inline.backend_inline", "backend_inline")]
)
def test_backend_is_headless_unless_chosen(chosen, expected):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if chosen:
        env["MPLBACKEND"] = chosen
    out = subprocess.run([sys.executable, "-c", SHOW_BACKEND], env=env, capture_output=True, text=True, check=True)
    assert expected in out.stdout.strip()
