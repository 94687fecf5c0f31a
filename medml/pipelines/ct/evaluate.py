"""Scores, tables and figures of the ``ct`` pipeline, and the z-profile figure of a predicted study.

Threshold rule (written down, as spec §2.8 asks): a label is positive when its probability is >= its threshold;
thresholds are ``evaluate.threshold`` (0.5) for every label under ``threshold_rule: fixed``, or each label's
F1-optimal threshold on the validation fold of CT-RATE train under ``val_f1`` (stored in the checkpoint by the
``thresholds`` stage). F1, precision, recall and accuracy are per label, then macro-averaged over the 18 labels;
mAP is the macro mean of scikit-learn's ``average_precision_score`` over labels with a positive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from sklearn.metrics import average_precision_score

from medml.io import write_csv
from medml.metrics import multilabel_auroc
from medml.utils.figures import figure, per_label_auroc_figure, save_figure
from medml.utils.files import write_json, write_text

#: Published CT-RATE validation-split ("test") results, from shared/specs/published-results.md §2.2 (level in brackets).
PUBLISHED_CTRATE = (
    ("CT-Net (supervised)", 0.629, 0.657, 0.617, "V2, EXACT README Suppl. Table 4"),
    ("CT-CLIP ClassFine", 0.756, 0.724, 0.689, "V2, EXACT README Suppl. Table 4"),
    ("T3D fine-tuned", 0.802, 0.778, 0.763, "V2, EXACT README Suppl. Table 4"),
    ("EXACT fine-tuned head", 0.833, 0.836, 0.769, "V1, EXACT README Suppl. Table 4"),
    ("ORACLE-CT (supervised)", 0.86, None, None, "V1, arXiv 2601.13385 abstract"),
    ("CT-SSG (paper)", None, None, None, "absolute values not retrieved; '+8% AUROC over ResNet3D'"),
)

#: Published RAD-ChestCT external results on the 16 labels shared with CT-RATE (published-results.md §2.3).
PUBLISHED_RADCHEST = (
    ("CT-Net (trained on CT-RATE)", 0.544, 0.564, 0.517, "V2, EXACT README Suppl. Table 4"),
    ("CT-CLIP ClassFine", 0.643, 0.644, 0.599, "V2, EXACT README Suppl. Table 4"),
    ("MedVista3D zero-shot", 0.710, 0.681, 0.668, "V2, EXACT README Suppl. Table 4"),
    ("EXACT fine-tuned", 0.734, 0.737, 0.682, "V1, EXACT README Suppl. Table 4"),
    ("Li et al. 2025 zero-shot", 0.773, None, None, "V1, arXiv 2509.13175 abstract"),
)


def binary_scores(targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label F1, precision, recall, accuracy at ``probs >= thresholds`` (0 where undefined, as sklearn's
    ``zero_division=0``)."""
    y = targets > 0.5
    pred = probs >= thresholds[None, :]
    tp = (pred & y).sum(0).astype(float)
    fp = (pred & ~y).sum(0).astype(float)
    fn = (~pred & y).sum(0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    accuracy = (pred == y).mean(0) if len(y) else np.zeros(y.shape[1])
    return {"f1": f1, "precision": precision, "recall": recall, "accuracy": accuracy}


def score(
    targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, labels: list[str], n_bootstrap: int = 1000
) -> dict[str, Any]:
    """Every metric of the pipeline on one split: AUROC (per label, macro, bootstrap CIs), mAP, F1/P/R/accuracy."""
    auroc = multilabel_auroc(targets, probs, names=labels, n_bootstrap=n_bootstrap)
    binary = binary_scores(targets, probs, thresholds)
    ap = {}
    for j, name in enumerate(labels):
        if targets[:, j].sum() > 0:
            ap[name] = float(average_precision_score(targets[:, j], probs[:, j]))
    per_label = {}
    for j, name in enumerate(labels):
        row = {"n_pos": int(targets[:, j].sum()), "threshold": float(thresholds[j])}
        row.update(auroc["per_label"].get(name, {"auroc": None, "ci_lo": None, "ci_hi": None}))
        row["ap"] = ap.get(name)
        row.update({k: float(v[j]) for k, v in binary.items()})
        per_label[name] = row
    return {
        "n": int(len(targets)),
        "macro_auroc": auroc["macro"],
        "macro_auroc_ci": list(auroc["macro_ci"]),
        "mAP": float(np.mean(list(ap.values()))) if ap else float("nan"),
        **{f"macro_{k}": float(np.mean(v)) for k, v in binary.items()},
        "auroc_skipped": auroc["skipped"],
        "per_label": per_label,
        "_auroc": auroc,
    }


def write_evaluation(
    result: dict[str, Any], out_dir: Path, split: str, title: str, rule: str, published=PUBLISHED_CTRATE
) -> dict[str, float]:
    """metrics.json, per_label.csv, comparison.md and per_label_auroc.png; returns the headline numbers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    auroc = result.pop("_auroc")
    result["threshold_rule"] = rule
    write_json(out_dir / "metrics.json", result)
    columns = ["label", "n_pos", "auroc", "ci_lo", "ci_hi", "ap", "f1", "precision", "recall", "accuracy", "threshold"]
    write_csv(
        ({"label": name, **{k: _fmt(v) for k, v in row.items()}} for name, row in result["per_label"].items()),
        out_dir / "per_label.csv",
        columns=columns,
    )
    write_text(out_dir / "comparison.md", comparison_table(result, split, published))
    per_label_auroc_figure(auroc, out_dir / "per_label_auroc.png", title)
    keys = ("macro_auroc", "mAP", "macro_f1", "macro_precision", "macro_recall", "macro_accuracy")
    return {k: result[k] for k in keys}


def _fmt(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) else value


def comparison_table(result: dict[str, Any], split: str, published=PUBLISHED_CTRATE) -> str:
    """Markdown: our numbers beside the published ones (CT-RATE: only comparable on the real validation split;
    RAD-ChestCT: on the 16 shared labels)."""
    lines = [
        "| model | AUROC | F1 | accuracy | source |",
        "|---|---|---|---|---|",
        f"| medml CT-SSG, this run ({split}, n={result['n']}) | {result['macro_auroc']:.3f} | {result['macro_f1']:.3f}"
        f" | {result['macro_accuracy']:.3f} | this evaluation; threshold rule: {result.get('threshold_rule')} |",
    ]
    for name, auc, f1, acc, source in published:
        cells = ["—" if v is None else f"{v:.3f}" for v in (auc, f1, acc)]
        lines.append(f"| {name} | {' | '.join(cells)} | {source} |")
    return "\n".join(lines) + "\n"


def z_profile_figure(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    profiles: dict[str, np.ndarray],
    probs: dict[str, float],
    path: Path,
    title: str = "",
) -> Path:
    """Coronal reformat of the preprocessed volume (SLP: superior up, patient right on the viewer's left) beside
    each positive finding's node-occlusion profile along z (logit drop when that triplet is removed)."""
    d, h, w = image.shape
    coronal = np.asarray(image[:, :, w // 2], dtype=np.float32)[::-1]  # (S, L), superior at the top
    z_mm = (np.arange(d // 3) * 3 + 1) * spacing[0]
    extent = (0, h * spacing[1], 0, d * spacing[0])
    fig = figure(figsize=(8, 4.2))
    ax_img, ax_prof = fig.subplots(
        1, 2, gridspec_kw={"width_ratios": [h * spacing[1], 0.8 * h * spacing[1]]}, sharey=True
    )
    ax_img.imshow(coronal, cmap="gray", extent=extent, aspect="equal", vmin=-0.449, vmax=0.551)
    ax_img.set_xlabel("patient right -> left (mm)", fontsize=8)
    ax_img.set_ylabel("inferior -> superior (mm from the grid's bottom)", fontsize=8)
    ax_img.set_title("coronal reformat", fontsize=9)
    for i, (name, profile) in enumerate(profiles.items()):
        colour = matplotlib.colormaps["tab10"](i % 10)
        ax_prof.plot(profile, z_mm, color=colour, lw=1.4, label=f"{name} (p={probs[name]:.2f})")
        peak = int(np.argmax(profile))
        ax_img.axhline(z_mm[peak], color=colour, lw=1.0, ls="--")
    ax_prof.axvline(0, color="grey", lw=0.5)
    ax_prof.set_xlabel("logit drop when the triplet is occluded", fontsize=8)
    if profiles:
        ax_prof.legend(fontsize=6, loc="upper right")
    else:
        ax_prof.text(0.5, 0.5, "no positive finding", ha="center", va="center", transform=ax_prof.transAxes)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=90)
