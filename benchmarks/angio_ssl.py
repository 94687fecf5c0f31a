"""Label efficiency of the angio methods on the *hard* synthetic MOSXAV (benchmark, not a test).

For each labelled fraction (``data.labelled_by: videos``), seed and method: train the tiny recipe (or ``--recipe``)
on the same hard synthetic MOSXAV, evaluate the test split with the EMA teacher (every method: same kind of weights,
same data, same labelled videos for a given seed), and report mean +- sd over seeds of the mean foreground Dice, of
each class's Dice and of the mean HD95 (missed / hallucinated classes penalised by the frame diagonal).

Methods: supervised, mean_teacher, diffrect (label-latent diffusion + rectified pseudo-labels, no prototypes), rnpll,
and rnpll without each of its parts (``--ablations``). ``--corrupt F`` is the noisy pseudo-label stress test: a share
F of the teacher's pseudo-label tiles is corrupted (removed / flipped / shifted) during training, and rnpll is run with
and without the prototype anchoring (prototype terms and pseudo-label denoising off).

    python benchmarks/angio_ssl.py                                  # 1/8 and 1/4, 3 seeds, main methods (~1 h CPU)
    python benchmarks/angio_ssl.py --seeds 0 --epochs 4 --quick     # the smallest meaningful run
    python benchmarks/angio_ssl.py --ablations --fractions 0.25
    python benchmarks/angio_ssl.py --ablations proto_infonce proto_denoise --methods rnpll
    python benchmarks/angio_ssl.py --corrupt 0.3 --fractions 0.25

Writes ``<out>/results.json`` and ``<out>/table.md`` (the model card's table format).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medml.config import load_config, resolve_recipe  # noqa: E402
from medml.data.synthetic_mosxav import write_synthetic_mosxav  # noqa: E402
from medml.engine.checkpoint import load_checkpoint  # noqa: E402
from medml.engine.train import train  # noqa: E402
from medml.registry import get_pipeline  # noqa: E402

CLASSES = ("vessel", "contrast_catheter", "catheter", "balloon")
MAIN = {
    "supervised": ["model.method=supervised"],
    "mean_teacher": ["model.method=mean_teacher"],
    "diffrect": ["model.method=diffrect"],
    "rnpll": ["model.method=rnpll"],
    # Not run by default: the former default (decoded latent alone, diffusion pseudo-labels from refine_start_step
    # whatever the diffusion predictor scores), and the decoder's image bypass on top of the default.
    "rnpll_former": ["model.method=rnpll", "model.prior_residual=false", "model.refine_gate=false"],
    "rnpll_decoder_skips": ["model.method=rnpll", "model.decoder_skips=true"],
}
DEFAULT_METHODS = ["supervised", "mean_teacher", "diffrect", "rnpll"]
ABLATIONS = {
    "rnpll -proto_infonce": ["model.method=rnpll", "loss.proto_weight=0"],
    "rnpll -proto_consistency": ["model.method=rnpll", "loss.proto_consistency_weight=0"],
    "rnpll -proto_align": ["model.method=rnpll", "loss.proto_align_weight=0"],
    "rnpll -proto_denoise": ["model.method=rnpll", "loss.proto_denoise=none"],
    "rnpll -diffusion_pseudo_labels": ["model.method=rnpll", "model.refine_pseudo_labels=false"],
    "rnpll -segmenter_prior": ["model.method=rnpll", "model.segmenter_prior=false"],
    "rnpll +decoder_skips": ["model.method=rnpll", "model.decoder_skips=true"],
    "rnpll -prior_residual": ["model.method=rnpll", "model.prior_residual=false"],
    "rnpll -refine_gate": ["model.method=rnpll", "model.refine_gate=false"],
}
# The pseudo-label recipe before the fixes of issue 12 (no warm-up, class weights on pseudo-labels, no balancing).
FORMER_PSEUDO = ["loss.warmup_fraction=0", "loss.unsup_class_weights=true", "loss.pseudo_balance=none"]
DIAGNOSIS = {
    "mean_teacher, former pseudo-label recipe": ["model.method=mean_teacher", *FORMER_PSEUDO],
    "mean_teacher -warmup": ["model.method=mean_teacher", "loss.warmup_fraction=0"],
    "mean_teacher -class_balance": ["model.method=mean_teacher", "loss.pseudo_balance=none"],
}
NO_ANCHOR = ["loss.proto_weight=0", "loss.proto_consistency_weight=0", "loss.proto_align_weight=0"]


def run_one(data: Path, out: Path, recipe: str, overrides: list[str]) -> dict[str, Any]:
    cls = get_pipeline("angio")
    pipeline = cls(load_config(cls.Config, resolve_recipe("angio", recipe), overrides))
    start = time.perf_counter()
    train(pipeline, data, out)
    seconds = time.perf_counter() - start
    trained, module = load_checkpoint(out / "model.ckpt", expect_pipeline="angio")
    metrics = trained.evaluate(module, data, "test", out / "eval")
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    return {
        "dice_mean": metrics["dice_mean"],
        "hd95_mean": metrics["hd95_mean"],
        "temporal_ratio": saved["temporal_consistency"]["ratio"],
        **{f"dice_{c}": saved["overall"][c]["dice"] for c in CLASSES},
        "train_s": seconds,
    }


def mean_sd(values: list[float]) -> str:
    vals = np.asarray([v for v in values if v == v], dtype=float)
    if not len(vals):
        return "n/a"
    return f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    lines = [
        "| labelled videos | method | n | mean fg Dice | vessel | contrast catheter | catheter | balloon | mean HD95 | "
        "temporal ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fraction, methods in results.items():
        for method, runs in methods.items():
            cells = [mean_sd([r["dice_mean"] for r in runs])]
            cells += [mean_sd([r[f"dice_{c}"] for r in runs]) for c in CLASSES]
            cells += [mean_sd([r["hd95_mean"] for r in runs]), mean_sd([r["temporal_ratio"] for r in runs])]
            lines.append(f"| {fraction} | {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("angio_ssl_runs"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", default=DEFAULT_METHODS, help=f"from {list(MAIN)} (may be empty)")
    parts = [name.split(" ")[1][1:] for name in ABLATIONS]  # "rnpll -proto_infonce" -> "proto_infonce"
    parser.add_argument(
        "--ablations", nargs="*", metavar="PART", help=f"rnpll without each of its parts (all, or some of {parts})"
    )
    parser.add_argument("--diagnosis", action="store_true", help="mean teacher without each pseudo-label fix")
    parser.add_argument("--corrupt", type=float, default=0.0, help="stress test: corrupted pseudo-label share")
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--epochs", type=int, default=None, help="train.max_epochs override")
    parser.add_argument("--videos", type=int, default=24, help="trainval videos of the hard synthetic set")
    parser.add_argument("--quick", action="store_true", help="16 trainval / 4 test videos of 15 frames")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run")
    args = parser.parse_args()

    if unknown := [m for m in args.methods if m not in MAIN]:
        parser.error(f"unknown method(s) {unknown}; choose from {list(MAIN)}")
    methods = {m: MAIN[m] for m in args.methods}
    if args.ablations is not None:
        if unknown := [a for a in args.ablations if a not in parts]:
            parser.error(f"unknown ablation(s) {unknown}; choose from {parts}")
        methods.update({k: ABLATIONS[k] for k, p in zip(ABLATIONS, parts) if p in (args.ablations or parts)})
    if args.diagnosis:
        methods.update(DIAGNOSIS)
    if args.corrupt > 0:
        corrupt = [f"model.pseudo_label_corruption={args.corrupt}"]
        methods = {
            f"rnpll, {args.corrupt:.0%} corrupted pseudo-labels": ["model.method=rnpll", *corrupt],
            f"rnpll without prototype anchoring, {args.corrupt:.0%} corrupted": [
                "model.method=rnpll",
                *NO_ANCHOR,
                "loss.proto_denoise=none",
                *corrupt,
            ],
        }
    data = args.out / "data"
    if not data.exists():
        n_trainval, n_test, frames = (16, 4, 15) if args.quick else (args.videos, 6, 20)
        write_synthetic_mosxav(data, n_trainval=n_trainval, n_test=n_test, n_frames=frames, difficulty="hard")
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    started = time.perf_counter()
    results_path = args.out / "results.json"
    for fraction in args.fractions:
        label = f"1/{round(1 / fraction)}" if fraction < 1 else "all"
        results[label] = {}
        for method, overrides in methods.items():
            runs = []
            for seed in args.seeds:
                run_dir = args.out / f"f{fraction}_{method.replace(' ', '_').replace(',', '')}_s{seed}"
                extra = [
                    "data.labelled_by=videos",
                    f"data.labelled_fraction={fraction}",
                    f"data.split_seed={seed}",
                    f"train.seed={seed}",
                    "train.progress=false",
                ]
                if args.epochs:
                    extra.append(f"train.max_epochs={args.epochs}")
                runs.append(run_one(data, run_dir, args.recipe, [*extra, *overrides, *args.set]))
                print(f"{label} {method} seed {seed}: {json.dumps(runs[-1])}", flush=True)
                results[label][method] = runs
                results_path.write_text(json.dumps(results, indent=2))
    wall = f"\nWall time: {time.perf_counter() - started:.0f} s (training + evaluation, {' '.join(sys.argv[1:])})\n"
    (args.out / "table.md").write_text(table(results) + wall)
    print(table(results) + wall)


if __name__ == "__main__":
    main()
