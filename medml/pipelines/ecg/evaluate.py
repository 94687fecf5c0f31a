"""Scoring the ``ecg`` pipeline on a PTB-XL fold: whole-fold macro and weighted AUROC (bootstrap CIs) of the 71
fused outputs and of each branch's own classifier, on all labels and each benchmark label set; calibration (Brier,
ECE, reliability diagram) before and after the fold-9 fit; sensitivity/specificity at the fold-9 thresholds; the
per-record outputs; the benchmark table against the published numbers; figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medml.data.ptbxl import ECGDataset
from medml.errors import ConfigError, DataLayoutError
from medml.io import write_csv
from medml.metrics import fmax, multilabel_auroc
from medml.metrics.calibration import calibration_summary, reliability_bins
from medml.metrics.classification import bootstrap_ci, sensitivity_specificity
from medml.pipelines.ecg.config import EcgConfig
from medml.pipelines.ecg.data import branch_label_indices, open_ptbxl
from medml.pipelines.ecg.module import EcgModule
from medml.pipelines.ecg.plots import reliability_figure
from medml.utils.files import write_json, write_text

BENCHMARK_SETS = ("diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")
#: Strodthoff et al. 2020 leaderboard (fold 10 macro-AUROC, best model per task; spec 1.11) and ProtoECGNet.
BENCHMARK_BEST = {
    "all": ("inception1d / xresnet1d101", 0.925),
    "diagnostic": ("xresnet1d101", 0.937),
    "subdiagnostic": ("inception1d", 0.930),
    "superdiagnostic": ("resnet1d_wang", 0.930),
    "form": ("inception1d", 0.899),
    "rhythm": ("xresnet1d101", 0.957),
}
#: ProtoECGNet's own headline (Sethi et al., MLHC 2025, Tables 1-2): level V3 in specs/published-results.md §0 /
#: §1.2, i.e. known only from one third-party literature note; the paper's table was not reachable. Unverified.
PROTOECGNET_PUBLISHED = {"all": 0.913}  # macro; the paper's weighted AUROC was not found
PROTOECGNET_PUBLISHED_NOTE = (
    "ProtoECGNet paper value: V3, unverified (one third-party literature note on Sethi et "
    "al., MLHC 2025, Tables 1-2, as listed in specs/published-results.md; the paper's own "
    "table was not reachable)"
)


def evaluate_fold(module: EcgModule, data_dir: Path, split: str, out_dir: Path, config: EcgConfig) -> dict[str, float]:
    """Score ``split`` and write ``metrics.json``, ``predictions_<split>.csv`` (calibrated and raw probabilities),
    ``per_label_auroc.csv``/``.png``, ``thresholds_<split>.csv``, ``reliability.png`` and ``benchmark_table.md``
    into ``out_dir``; return the headline numbers."""
    from medml.utils.figures import per_label_auroc_figure  # picks a backend at import: only when drawing

    results, arrays = evaluate_split(module, Path(data_dir), split, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reliability = results.pop("_reliability")
    write_json(out_dir / "metrics.json", results)
    # per-record outputs, so any metric can be recomputed over the whole fold later
    codes = module.label_names
    write_csv(
        (
            {
                "ecg_id": int(ecg_id),
                **{f"prob_{c}": f"{v:.6f}" for c, v in zip(codes, prob)},
                **{f"raw_prob_{c}": f"{v:.6f}" for c, v in zip(codes, raw)},
                **{f"label_{c}": int(v) for c, v in zip(codes, target)},
            }
            for ecg_id, prob, raw, target in zip(
                arrays["ecg_id"], arrays["probs"], arrays["raw_probs"], arrays["target"]
            )
        ),
        out_dir / f"predictions_{split}.csv",
        columns=[
            "ecg_id",
            *(f"prob_{c}" for c in codes),
            *(f"raw_prob_{c}" for c in codes),
            *(f"label_{c}" for c in codes),
        ],
    )
    write_csv(
        (
            {
                "label_set": label_set,
                "label": label,
                "auroc": f"{row['auroc']:.4f}",
                "ci_lo": f"{row['ci_lo']:.4f}",
                "ci_hi": f"{row['ci_hi']:.4f}",
                "n_pos": row["n_pos"],
            }
            for label_set, res in results["label_sets"].items()
            for label, row in res["per_label"].items()
        ),
        out_dir / "per_label_auroc.csv",
    )
    write_csv(
        (
            {
                "label": label,
                "threshold": f"{row['threshold']:.2f}",
                "threshold_rule": row["rule"],
                "n_pos": row["n_pos"],
                "sensitivity": f"{row['sensitivity']:.4f}",
                "sensitivity_ci_lo": f"{row['sensitivity_ci'][0]:.4f}",
                "sensitivity_ci_hi": f"{row['sensitivity_ci'][1]:.4f}",
                "specificity": f"{row['specificity']:.4f}",
                "specificity_ci_lo": f"{row['specificity_ci'][0]:.4f}",
                "specificity_ci_hi": f"{row['specificity_ci'][1]:.4f}",
            }
            for label, row in results["thresholds"]["per_label"].items()
        ),
        out_dir / f"thresholds_{split}.csv",
    )
    write_text(out_dir / "benchmark_table.md", benchmark_table(results))
    data = results["data"]
    per_label_auroc_figure(
        results["label_sets"]["all"],
        out_dir / "per_label_auroc.png",
        title=f"ProtoECGNet, {data} {split} fold, 71 labels (fused, calibrated)",
    )
    reliability_figure(reliability, out_dir / "reliability.png", title=f"ProtoECGNet, {data} {split} fold")
    headline = {
        "macro_auroc": results["label_sets"]["all"]["macro"],
        "weighted_auroc": results["label_sets"]["all"]["weighted"],
        "fmax_test_optimistic": results["fmax"],
        "micro_f1_at_val_thresholds": results["micro_f1_at_val_thresholds"],
        "ece_raw": results["calibration"]["raw"]["ece"],
        "ece_calibrated": results["calibration"]["calibrated"]["ece"],
    }
    for name in BENCHMARK_SETS:
        headline[f"macro_auroc_{name}"] = results["label_sets"][name]["macro"]
    for branch in ("rhythm", "morphology", "global"):
        headline[f"macro_auroc_branch_logits_{branch}"] = results["branch_logit_sets"][f"branch_{branch}"]["macro"]
    return headline


def _label_set_scores(
    ptbxl, probs: np.ndarray, row_ids: np.ndarray, target: np.ndarray, codes: list[str], n_bootstrap: int
) -> dict[str, Any]:
    """AUROC of 71-column scores on all labels and on each benchmark label set derived from them.

    Aggregated labels (sub/superdiagnostic) take the max probability over their member codes; as in the
    benchmark, records with no positive label in a task are left out of that task.
    """
    sets: dict[str, Any] = {"all": multilabel_auroc(target, probs, names=codes, n_bootstrap=n_bootstrap)}
    for name in BENCHMARK_SETS:
        names, y_full = ptbxl.label_matrix(name)
        _, members = ptbxl.label_aggregation(name)  # (71, K) membership of each code in each task label
        y = np.asarray(y_full)[row_ids]
        scores = np.stack([probs[:, members[:, k] > 0].max(1) for k in range(len(names))], axis=1)
        keep = y.sum(1) > 0
        res = multilabel_auroc(y[keep], scores[keep], names=list(names), n_bootstrap=n_bootstrap)
        res["n_records_without_label_dropped"] = int((~keep).sum())
        sets[name] = res
    for branch, index in branch_label_indices(codes).items():
        sets[f"branch_{branch}"] = multilabel_auroc(
            target[:, index], probs[:, index], names=[codes[i] for i in index], n_bootstrap=n_bootstrap
        )
    return sets


def _micro_f1(y: np.ndarray, decision: np.ndarray) -> float:
    tp = float((decision & y).sum())
    return 2 * tp / max(float(decision.sum() + y.sum()), 1.0)


def evaluate_split(
    module: EcgModule, data_dir: Path, split: str, config: EcgConfig, n_bootstrap: int = 1000
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Whole-fold scores and the per-record arrays (ecg_id, calibrated and raw probabilities, targets) behind them.

    ``label_sets``: the fused, calibrated outputs; ``branch_logit_sets``: each label scored by its own branch's
    classifier (the branch logits, before fusion), same sets. Both carry macro and weighted AUROC with CIs.
    """
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split '{split}' is not one of train, val, test")
    ptbxl = open_ptbxl(data_dir, config)
    codes = list(ptbxl.codes)
    if codes != list(module.label_names):
        raise DataLayoutError("scp_statements.csv rows differ from the labels the model was trained on", data_dir)
    rows = ptbxl.split_indices(split)
    out = module.predict_dataset(ECGDataset(ptbxl, rows, "all"), device=module.device)  # evaluate --device
    order = np.argsort(out["index"])  # predict_dataset keeps order; sorting makes that explicit
    probs, raw, target = out["probs"][order], out["raw_probs"][order], out["target"][order]
    branch_probs = out["branch_probs"][order]
    row_ids = out["index"][order]
    y = target > 0.5
    label_sets = _label_set_scores(ptbxl, probs, row_ids, target, codes, n_bootstrap)
    branch_sets = _label_set_scores(ptbxl, branch_probs, row_ids, target, codes, n_bootstrap)

    thresholds = module.thresholds.cpu().numpy()
    decisions = probs >= thresholds
    min_pos = config.model.threshold_min_positives
    val_pos = np.asarray(ptbxl.labels[ptbxl.split_indices("val")]).sum(0)
    per_label = {}
    for c, code in enumerate(codes):
        rule = "own F1-optimal on fold 9" if val_pos[c] >= min_pos else f"fallback: micro-Fmax (< {min_pos} fold-9 +)"
        if config.model.threshold == "fmax":
            rule = "micro-Fmax on fold 9"
        per_label[code] = {
            "threshold": float(thresholds[c]),
            "rule": rule,
            **sensitivity_specificity(y[:, c], decisions[:, c]),
        }
    fm, ft = fmax(target, probs)
    calibration = {
        "method": config.model.calibration,
        "raw": calibration_summary(target, raw),
        "calibrated": calibration_summary(target, probs),
    }
    results = {
        "split": split,
        "data": ptbxl.title,
        "n_records": int(len(rows)),
        "label_sets": label_sets,
        "branch_logit_sets": branch_sets,
        "fmax": fm,
        "fmax_threshold": ft,
        "fmax_note": "optimistic: Fmax picks its threshold on this fold itself; F1 at fold-9 thresholds is honest",
        "micro_f1_at_val_thresholds": _micro_f1(y, decisions),
        "micro_f1_at_val_thresholds_ci": bootstrap_ci(_micro_f1, y, decisions, n_bootstrap=n_bootstrap),
        "thresholds": {"policy": config.model.threshold, "min_positives": min_pos, "per_label": per_label},
        "calibration": calibration,
        "aggregation": "sub/superdiagnostic scores = max over member SCP codes of the 71 outputs",
        "_reliability": {
            "raw": reliability_bins(target, raw),
            "calibrated": reliability_bins(target, probs),
            "ece_raw": calibration["raw"]["ece"],
            "ece_calibrated": calibration["calibrated"]["ece"],
        },
    }
    arrays = {"ecg_id": np.asarray(ptbxl.ecg_ids)[row_ids], "probs": probs, "raw_probs": raw, "target": target}
    return results, arrays


def _cell(res: dict[str, Any], key: str) -> str:
    """``0.925(08)``: the value and its 95% bootstrap half-width in thousandths, as the PTB-XL benchmark writes it."""
    value = res[key]
    if not np.isfinite(value):
        return "n/a"
    lo, hi = res[f"{key}_ci"]
    half = (hi - lo) / 2 if np.isfinite(lo) and np.isfinite(hi) else float("nan")
    return f"{value:.3f}({half * 1000:02.0f})" if np.isfinite(half) else f"{value:.3f}"


def benchmark_table(results: dict[str, Any]) -> str:
    """Markdown table in the PTB-XL benchmark's format: AUROC (95% bootstrap half-width in thousandths)."""
    lines = [
        f"Data: {results.get('data', 'PTB-XL')}. Split: {results['split']} ({results['n_records']} records); "
        "AUROC over the whole fold.",
        "",
        "| Task (#labels) | medml macro (fused) | medml weighted (fused) | medml macro (branch logits) | "
        "medml weighted (branch logits) | best PTB-XL benchmark, macro (Strodthoff 2020) | ProtoECGNet paper, macro |"
        " ProtoECGNet paper, weighted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("all", *BENCHMARK_SETS):
        res, branch = results["label_sets"][name], results["branch_logit_sets"][name]
        k = len(res["per_label"]) + len(res["skipped"])
        model, value = BENCHMARK_BEST[name]
        paper = f"{PROTOECGNET_PUBLISHED[name]:.3f} (V3, unverified)" if name in PROTOECGNET_PUBLISHED else "not found"
        scored = f"; {len(res['per_label'])} scored" if res["skipped"] else ""
        lines.append(
            f"| {name} ({k}{scored}) | {_cell(res, 'macro')} | {_cell(res, 'weighted')} | {_cell(branch, 'macro')} | "
            f"{_cell(branch, 'weighted')} | {model} {value:.3f} | {paper} | not found |"
        )
    lines += ["", "Per branch (labels of that branch only):", ""]
    lines += [
        "| Branch | fused macro | fused weighted | branch-logit macro | branch-logit weighted |",
        "|---|---|---|---|---|",
    ]
    for branch in ("rhythm", "morphology", "global"):
        res, own = results["label_sets"][f"branch_{branch}"], results["branch_logit_sets"][f"branch_{branch}"]
        lines.append(
            f"| {branch} | {_cell(res, 'macro')} | {_cell(res, 'weighted')} | {_cell(own, 'macro')} | "
            f"{_cell(own, 'weighted')} |"
        )
    cal = results["calibration"]
    lo, hi = results["micro_f1_at_val_thresholds_ci"]
    lines += [
        "",
        f"Micro-F1 at the fold-9 thresholds: {results['micro_f1_at_val_thresholds']:.3f} (95% CI {lo:.3f}-{hi:.3f}).",
        f"Fmax (micro, 71 labels): {results['fmax']:.3f} at threshold {results['fmax_threshold']:.2f}: "
        "optimistic, its threshold is chosen on this fold.",
        f"Calibration ({cal['method']}, fitted on fold 9): Brier {cal['raw']['brier']:.4f} -> "
        f"{cal['calibrated']['brier']:.4f}, ECE {cal['raw']['ece']:.4f} -> {cal['calibrated']['ece']:.4f}.",
        "",
        f"{PROTOECGNET_PUBLISHED_NOTE}. Best PTB-XL benchmark: Strodthoff et al. 2020, V1 (official "
        "README of helme/ecg_ptbxl_benchmarking). Branch logits: each label scored by its own branch's classifier "
        "(before fusion).",
    ]
    return "\n".join(lines) + "\n"
