"""Library figures never switch the user's matplotlib backend nor leave figures in pyplot, and render PNGs headless."""

import os
import subprocess
import sys

from PIL import Image

from medml.utils.figures import figure, save_figure

# Every module that draws: importing it and drawing with it must leave a chosen backend and pyplot alone.
DRAWING_MODULES = [
    "medml.utils.figures",
    "medml.demo",
    *(
        f"medml.pipelines.{name}.{part}"
        for name in ("ecg", "angio", "ct", "fundus", "dental")
        for part in ("pipeline", "evaluate")
    ),
    "medml.pipelines.ecg.explain",
    "medml.pipelines.angio.outputs",
    "medml.pipelines.fundus.outputs",
    "medml.pipelines.dental.outputs",
]


def test_drawing_modules_leave_the_backend_and_pyplot_alone():
    code = (
        "import importlib, sys, matplotlib; matplotlib.use('svg')\n"
        f"for name in {DRAWING_MODULES!r}: importlib.import_module(name)\n"
        "from medml.utils.figures import per_label_auroc_figure\n"
        "per_label_auroc_figure({'per_label': {'a': {'auroc': 0.8, 'ci_lo': 0.7, 'ci_hi': 0.9, 'n_pos': 3}},"
        " 'macro': 0.8}, sys.argv[1])\n"
        "plt = sys.modules.get('matplotlib.pyplot')\n"
        "print(matplotlib.get_backend(), len(plt.get_fignums()) if plt else 0)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"medml-figure-{os.getpid()}.png")
    result = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["svg", "0"]  # the backend chosen, and no figure left open in pyplot
    assert Image.open(out).format == "PNG"
    os.remove(out)


def test_save_figure_writes_a_png_of_the_requested_size(tmp_path):
    fig = figure(figsize=(4, 3))
    fig.subplots().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "f.png", dpi=50, tight=False)
    assert Image.open(path).size == (200, 150)
