"""Evaluation of the ``fundus`` pipeline with the REFUGE metrics (`medml.metrics.refuge`), overall and per camera:
the challenge submission files of the split, ``metrics.json``, ``per_image.csv``, ``per_camera.csv`` and a figure
(ROC, vCDR by class, fovea error per camera, examples)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from medml.data.refuge import REFUGE, camera_for_size, read_mask, write_challenge_mask
from medml.io import write_csv
from medml.metrics.refuge import classification_metrics, fovea_distance, segmentation_metrics
from medml.pipelines.fundus.config import FundusConfig
from medml.pipelines.fundus.data import read_rgb
from medml.pipelines.fundus.module import FundusModule, NoDiscError
from medml.pipelines.fundus.outputs import CLASSIFICATION_HEADER, FOVEA_HEADER
from medml.utils.figures import figure, save_figure
from medml.utils.files import write_json

HEADLINE = ("auc", "sensitivity_at_85_specificity", "disc_dice", "cup_dice", "vcdr_mae", "fovea_distance")


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The challenge numbers over ``rows``: AUC and reference sensitivity, mean disc/cup Dice (NaN-free images),
    vCDR MAE, mean fovea distance; plus counts."""
    out: dict[str, float] = {"images": len(rows)}
    labelled = [r for r in rows if r["label"] is not None]
    out.update(classification_metrics([r["label"] for r in labelled], [r["probability"] for r in labelled]))
    for key, column in (("disc_dice", "disc_dice"), ("cup_dice", "cup_dice"), ("vcdr_mae", "vcdr_ae")):
        vals = [r[column] for r in rows if r.get(column) is not None and not math.isnan(r[column])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    dists = [r["fovea_distance"] for r in rows if r.get("fovea_distance") is not None]
    out["fovea_distance"] = float(np.mean(dists)) if dists else float("nan")
    out["no_disc_found"] = sum(bool(r["no_disc"]) for r in rows)
    return out


def evaluate_split(cfg: FundusConfig, module: FundusModule, data_dir: Path, split: str, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    items = REFUGE(data_dir).items(split)  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    examples: list[tuple[np.ndarray, np.ndarray, dict[str, Any], str]] = []
    with module.evaluating():
        for item in items:
            rgb = read_rgb(item.image_path)
            height, width = rgb.shape[:2]
            try:
                result, no_disc = module.analyse(rgb, str(item.image_path)), False
            except NoDiscError:  # scored as the challenge would score an empty mask
                result = {
                    "labels": np.zeros((height, width), np.uint8),
                    "vcdr": 0.0,
                    "probability": 0.5,
                    "fovea": ((width - 1) / 2, (height - 1) / 2),
                    "box": (width / 2, height / 2, min(width, height) / 2),
                }
                no_disc = True
            row: dict[str, Any] = {
                "image": item.image_path.name,
                "camera": camera_for_size(width, height),
                "label": item.label,
                "probability": result["probability"],
                "vcdr_pred": result["vcdr"],
                "fovea_x": result["fovea"][0],
                "fovea_y": result["fovea"][1],
                "no_disc": no_disc,
            }
            if item.mask_path is not None:
                target = read_mask(item.mask_path)
                row.update(segmentation_metrics(result["labels"], target))
                if len(examples) < cfg.eval.figure_examples:
                    examples.append((rgb, target, result, item.name))
            if item.fovea is not None:
                row["fovea_distance"] = float(fovea_distance(result["fovea"], item.fovea))
            if cfg.eval.write_masks:
                write_challenge_mask(result["labels"], out_dir / "submission" / "segmentation" / f"{item.name}.bmp")
            rows.append(row)
    overall = summarise(rows)
    cameras = sorted({r["camera"] for r in rows})
    per_camera = {c: summarise([r for r in rows if r["camera"] == c]) for c in cameras}
    write_json(
        out_dir / "metrics.json",
        {
            "split": split,
            "images": len(rows),
            "definitions": "REFUGE official: AUC (roc_auc_score), sensitivity at 0.85 specificity (interp1d of the "
            "ROC), disc Dice on mask<255, cup Dice on mask==0, vCDR from column-count vertical diameters, vCDR MAE, "
            "mean fovea Euclidean distance in original pixels",
            "overall": overall,
            "per_camera": per_camera,
        },
    )
    write_csv([{k: _cell(v) for k, v in r.items()} for r in rows], out_dir / "per_image.csv")
    write_csv(
        [{"camera": c, **{k: _cell(v) for k, v in s.items()}} for c, s in [*per_camera.items(), ("ALL", overall)]],
        out_dir / "per_camera.csv",
    )
    write_csv(
        [{CLASSIFICATION_HEADER[0]: r["image"], CLASSIFICATION_HEADER[1]: round(r["probability"], 6)} for r in rows],
        out_dir / "submission" / "classification_results.csv",
    )
    write_csv(
        [
            {
                FOVEA_HEADER[0]: r["image"],
                FOVEA_HEADER[1]: round(r["fovea_x"], 2),
                FOVEA_HEADER[2]: round(r["fovea_y"], 2),
            }
            for r in rows
        ],
        out_dir / "submission" / "fovea_location_results.csv",
    )
    evaluation_figure(rows, per_camera, examples, out_dir / f"{split}_refuge.png")
    return {key: overall[key] for key in HEADLINE}


def _cell(value: Any) -> Any:
    return round(value, 5) if isinstance(value, float) else value


def evaluation_figure(rows: list[dict[str, Any]], per_camera: dict[str, Any], examples: list, path: Path) -> Path:
    """ROC, vCDR by class, fovea error per camera on the first row; examples (prediction vs reference) below."""
    n_ex = len(examples)
    fig = figure(figsize=(12, 4 + 3 * ((n_ex + 3) // 4)))
    grid = fig.add_gridspec(1 + (n_ex + 3) // 4, 4)
    ax = fig.add_subplot(grid[0, 0])
    labelled = [r for r in rows if r["label"] is not None]
    labels = np.array([r["label"] for r in labelled])
    if len(set(labels.tolist())) == 2:
        fpr, tpr, _ = roc_curve(labels, [r["probability"] for r in labelled])
        ax.plot(fpr, tpr)
        ax.axvline(0.15, color="grey", ls=":", lw=1)
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (glaucoma)")
    ax = fig.add_subplot(grid[0, 1])
    for value, name in ((0, "non-glaucoma"), (1, "glaucoma")):
        gt = [r["vcdr_gt"] for r in labelled if r["label"] == value and "vcdr_gt" in r]
        pred = [r["vcdr_pred"] for r in labelled if r["label"] == value and "vcdr_gt" in r]
        ax.scatter(gt, pred, s=12, label=name)
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=1)
    ax.set(xlabel="reference vCDR", ylabel="predicted vCDR", title="vCDR by class", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[0, 2])
    cams = list(per_camera)
    ax.bar(range(len(cams)), [per_camera[c]["fovea_distance"] for c in cams])
    ax.set_xticks(range(len(cams)), cams, rotation=20, fontsize=8)
    ax.set(ylabel="mean distance (px)", title="fovea error per camera")
    ax = fig.add_subplot(grid[0, 3])
    width = 0.38
    x = np.arange(len(cams))
    ax.bar(x - width / 2, [per_camera[c]["disc_dice"] for c in cams], width, label="disc")
    ax.bar(x + width / 2, [per_camera[c]["cup_dice"] for c in cams], width, label="cup")
    ax.set_xticks(x, cams, rotation=20, fontsize=8)
    ax.set(ylim=(0, 1), title="Dice per camera")
    ax.legend(fontsize=8)
    for i, (rgb, target, result, name) in enumerate(examples):
        ax = fig.add_subplot(grid[1 + i // 4, i % 4])
        ax.imshow(rgb)
        for mask, colour, style in (
            (target > 0, "lime", "--"),
            (target == 2, "cyan", "--"),
            (result["labels"] > 0, "green", "-"),
            (result["labels"] == 2, "blue", "-"),
        ):
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linestyles=style, linewidths=1)
        cx, cy, side = result["box"]
        ax.set_xlim(cx - side / 2, cx + side / 2)
        ax.set_ylim(cy + side / 2, cy - side / 2)
        ax.set_title(f"{name}: vCDR {result['vcdr']:.2f} (dashed: reference)", fontsize=8)
        ax.axis("off")
    return save_figure(fig, path, dpi=80)
