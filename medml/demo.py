"""``medml demo``: the whole job on synthetic data, for every registered pipeline, ending in ``report.html``.

For each pipeline: write a synthetic dataset in the official layout -> train the ``tiny`` recipe -> write a
synthetic folder of clinical files -> ``predict`` it -> ``evaluate`` the test split -> figures. The report says
plainly that every number in it comes from synthetic data. On a terminal: one line per step and one progress bar
per training stage, without the frameworks' tips and deprecation warnings.

Notebooks open the finished demo through `tiny_run`, which looks in ``$MEDML_DEMO_DIR``, then ``./medml-demo`` and
the ``medml-demo`` folders above (``make demo`` writes it at the repository root), and trains only if none has it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medml.config import load_config, resolve_recipe
from medml.engine.checkpoint import load_checkpoint
from medml.engine.evaluate import evaluate
from medml.engine.predict import predict_folder
from medml.engine.progress import quiet_training
from medml.engine.train import train
from medml.errors import MedmlError
from medml.registry import get_pipeline, list_pipelines
from medml.utils.figures import figure, save_figure
from medml.utils.files import write_json, write_text


@dataclass
class DemoRun:
    """Paths of one pipeline's demo, as notebooks use them."""

    name: str
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def clinical_dir(self) -> Path:
        return self.root / "clinical"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def pred_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def eval_dir(self) -> Path:
        return self.root / "evaluation"

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "model.ckpt"

    @property
    def summary_path(self) -> Path:
        return self.root / "demo.json"

    @property
    def finished(self) -> bool:
        return self.summary_path.is_file()

    def summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def run_pipeline_demo(name: str, root: Path, progress: bool = True) -> DemoRun:
    demo = DemoRun(name, Path(root) / name)
    if demo.finished:
        _say(progress, f"{name}: finished demo found in {demo.root}, reused")
        return demo
    demo.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cls = get_pipeline(name)
    pipeline = cls(load_config(cls.Config, resolve_recipe(name, "tiny"), [f"train.progress={progress}"]))

    t0 = time.perf_counter()
    if not (demo.data_dir / ".complete").exists():
        pipeline.synthesize(demo.data_dir, seed=0)
        (demo.data_dir / ".complete").touch()
    timings["synthesize"] = time.perf_counter() - t0
    _say(progress, f"{name}: synthetic dataset in the official layout ({timings['synthesize']:.0f} s)")

    t0 = time.perf_counter()
    if not demo.checkpoint.exists():
        resume = (demo.run_dir / "stages").exists()
        train(pipeline, demo.data_dir, demo.run_dir, resume=resume)
    timings["train"] = time.perf_counter() - t0
    _say(progress, f"{name}: trained the tiny recipe ({timings['train']:.0f} s)")

    t0 = time.perf_counter()
    if not (demo.clinical_dir / ".complete").exists():
        pipeline.synthesize_clinical(demo.clinical_dir, seed=1)
        (demo.clinical_dir / ".complete").touch()
    trained, module = load_checkpoint(demo.checkpoint, expect_pipeline=name)
    predict = predict_folder(
        trained, module, demo.clinical_dir, demo.pred_dir, progress=progress, checkpoint=demo.checkpoint
    )
    timings["predict"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = evaluate(name, demo.data_dir, demo.checkpoint, demo.eval_dir, split="test")
    timings["evaluate"] = time.perf_counter() - t0
    _say(progress, f"{name}: evaluated the synthetic test split ({timings['evaluate']:.0f} s)")

    figures = [str(p) for p in trained.report_figures(demo.run_dir, demo.eval_dir, demo.pred_dir)]
    curves = training_curves(demo.run_dir)
    if curves:
        figures.insert(0, str(curves))
    write_json(
        demo.summary_path,
        {
            "pipeline": name,
            "summary": cls.summary,
            "metrics": _headline(metrics),
            "predicted": predict.done,
            "failed": predict.failed,
            "timings_s": timings,
            "figures": figures,
        },
    )
    return demo


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalars only (nested per-label tables stay in the evaluation folder)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}


def training_curves(run_dir: Path) -> Path | None:
    """Plot every logged loss/metric column of ``run_dir/metrics.csv`` against epoch, one panel per stage."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    panels = []
    for stage in stages:
        srows = [r for r in rows if r["stage"] == stage]
        keys = [k for k in srows[0] if k not in ("stage", "epoch", "step") and any(r.get(k) for r in srows)]
        keys = [k for k in keys if k.endswith("_epoch") or k.startswith("val")] or keys
        if keys:
            panels.append((stage, srows, keys[:8]))
    if not panels:
        return None
    fig = figure(figsize=(4.5 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (stage, srows, keys) in zip(axes[0], panels):
        # losses on the left axis, scores (AUROC, Dice, ...) on the right: their scales differ by orders
        score_ax = ax.twinx()
        for key in keys:
            pts = [(float(r["epoch"]), float(r[key])) for r in srows if r.get(key) and r.get("epoch")]
            if pts:
                target, style = (ax, "-") if "loss" in key else (score_ax, "--")
                target.plot(*zip(*pts), style, marker="o", ms=3, label=key, color=f"C{keys.index(key)}")
        ax.set_title(stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        score_ax.set_ylabel("score")
        handles = ax.get_legend_handles_labels()[0] + score_ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7)
    return save_figure(fig, run_dir / "training_curves.png", dpi=90)


def _img(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}"><figcaption>{html.escape(Path(path).name)} '
        f"(synthetic data)</figcaption></figure>"
    )


def write_report(out_dir: Path, demos: list[DemoRun], failures: dict[str, str]) -> Path:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>medml demo report (synthetic data)</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}",
        ".synthetic{background:#fff3cd;border:1px solid #e0c060;padding:1em;font-weight:bold}",
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>",
        "<h1>medml demo report: synthetic data</h1>",
        "<p class='synthetic'>Every dataset, input file and number in this report is SYNTHETIC: generated by medml's "
        "test-data generators and a tiny model trained for seconds on a CPU. None of it says anything about the "
        "methods' performance on real patients; see each pipeline's model card for published results.</p>",
    ]
    for demo in demos:
        info = demo.summary()
        # The heading names the run, not the dataset: pipeline summaries name the real dataset (PTB-XL, MOSXAV)
        # that this synthetic run only imitates.
        parts.append(f"<h2>{html.escape(demo.name)}: synthetic demo</h2>")
        parts.append(
            f"<p>Method: {html.escape(info['summary'])}. Here it is trained and tested on <b>synthetic data</b> "
            "written by medml in that dataset's official layout; no real record is used.</p>"
        )
        parts.append(
            f"<p>{info['predicted']} synthetic clinical files predicted, {info['failed']} rejected "
            f"(listed in <code>{html.escape(str(demo.pred_dir / 'failures.csv'))}</code>).</p>"
        )
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
            if isinstance(v, float)
            else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
            for k, v in info["metrics"].items()
        )
        parts.append(f"<table><tr><th>metric (synthetic test split)</th><th>value</th></tr>{rows}</table>")
        timing = ", ".join(f"{k} {v:.0f} s" for k, v in info["timings_s"].items())
        parts.append(f"<p>Time: {timing}.</p>")
        parts += [_img(f) for f in info["figures"] if Path(f).is_file()]
    for name, reason in failures.items():
        parts.append(f"<h2>{html.escape(name)}: demo failed</h2><pre>{html.escape(reason)}</pre>")
    parts.append("</body></html>")
    report = out_dir / "report.html"
    write_text(report, "\n".join(parts))
    return report


def run_demo(out_dir: str | Path = "medml-demo", names: list[str] | None = None, progress: bool = True) -> Path:
    """Run the demo of each named pipeline (all registered ones by default) and write ``report.html``."""
    out_dir = Path(out_dir)
    names = names or list_pipelines()
    for name in names:
        get_pipeline(name)  # unknown name: one-line error before any work
    demos, failures = [], {}
    with quiet_training():
        for name in names:
            try:
                demos.append(run_pipeline_demo(name, out_dir, progress=progress))
            except MedmlError as exc:
                failures[name] = str(exc)
    report = write_report(out_dir, demos, failures)
    if failures:
        raise MedmlError(f"the demo of {', '.join(failures)} failed; see {report}")
    return report


DEMO_DIR_ENV = "MEDML_DEMO_DIR"


def demo_roots(start: str | Path | None = None) -> list[Path]:
    """Where a finished demo may be, in order: ``$MEDML_DEMO_DIR``, then ``medml-demo`` in ``start`` (the working
    directory) and in each folder above it (a notebook runs in ``notebooks/``; ``make demo`` writes the
    repository's ``medml-demo``)."""
    here = Path(start or os.getcwd()).resolve()
    env = os.environ.get(DEMO_DIR_ENV)
    return [*([Path(env)] if env else []), *(folder / "medml-demo" for folder in (here, *here.parents))]


def tiny_run(name: str, root: str | Path | None = None) -> DemoRun:
    """The finished tiny demo of ``name`` for notebooks: found where `demo_roots` looks, else run (minutes) under
    ``root``, ``$MEDML_DEMO_DIR`` or ``./medml-demo``."""
    candidates = [Path(root)] if root is not None else demo_roots()
    for folder in candidates:
        found = DemoRun(name, folder / name)
        if found.finished:
            print(f"using the finished {name} demo in {found.root}")
            return found
    target = candidates[0] if root is not None or os.environ.get(DEMO_DIR_ENV) else Path("medml-demo")
    print(
        f"no finished {name} demo in {', '.join(str(c) for c in candidates[:3])}: running it into {target / name} "
        f"(set {DEMO_DIR_ENV} to use another; `make demo` runs them all)"
    )
    with quiet_training():
        return run_pipeline_demo(name, target, progress=False)
