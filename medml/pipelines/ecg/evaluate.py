"""Scoring the ``ecg`` pipeline on a PTB-XL fold: whole-fold AUROC of the 71 fused outputs and of the benchmark
label sets, Fmax, the per-record outputs, the benchmark table against the published numbers, the per-label figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medml.data.ptbxl import ECGDataset
from medml.errors import ConfigError, DataLayoutError
from medml.io import write_csv
from medml.metrics import fmax, multilabel_auroc
from medml.pipelines.ecg.config import EcgConfig
from medml.pipelines.ecg.data import branch_label_indices, open_ptbxl
from medml.pipelines.ecg.module import EcgModule
from medml.utils.figures import per_label_auroc_figure
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
PROTOECGNET_PUBLISHED = {"all": 0.913}
PROTOECGNET_PUBLISHED_NOTE = (
    "ProtoECGNet paper value: V3, unverified (one third-party literature note on Sethi et "
    "al., MLHC 2025, Tables 1-2, as listed in specs/published-results.md; the paper's own "
    "table was not reachable)"
)


def evaluate_fold(module: EcgModule, data_dir: Path, split: str, out_dir: Path, config: EcgConfig) -> dict[str, float]:
    """Score ``split`` and write ``metrics.json``, ``predictions_<split>.csv``, ``per_label_auroc.csv``/``.png`` and
    ``benchmark_table.md`` into ``out_dir``; return the headline numbers."""
    results, arrays = evaluate_split(module, Path(data_dir), split, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", results)
    # per-record outputs, so any metric can be recomputed over the whole fold later
    codes = module.label_names
    write_csv(
        (
            {
                "ecg_id": int(ecg_id),
                **{f"prob_{c}": f"{v:.6f}" for c, v in zip(codes, prob)},
                **{f"label_{c}": int(v) for c, v in zip(codes, target)},
            }
            for ecg_id, prob, target in zip(arrays["ecg_id"], arrays["probs"], arrays["target"])
        ),
        out_dir / f"predictions_{split}.csv",
        columns=["ecg_id", *(f"prob_{c}" for c in codes), *(f"label_{c}" for c in codes)],
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
    write_text(out_dir / "benchmark_table.md", benchmark_table(results))
    per_label_auroc_figure(
        results["label_sets"]["all"],
        out_dir / "per_label_auroc.png",
        title=f"ProtoECGNet, PTB-XL {split} fold, 71 labels",
    )
    headline = {"macro_auroc": results["label_sets"]["all"]["macro"], "fmax": results["fmax"]}
    for name in BENCHMARK_SETS:
        headline[f"macro_auroc_{name}"] = results["label_sets"][name]["macro"]
    return headline


def evaluate_split(
    module: EcgModule, data_dir: Path, split: str, config: EcgConfig, n_bootstrap: int = 1000
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Whole-fold scores of the fused 71 outputs, and of each benchmark label set derived from them; also the
    per-record arrays (ecg_id, probabilities, targets) they were computed from.

    Aggregated labels (sub/superdiagnostic) take the max probability over their member codes; as in the
    benchmark, records with no positive label in a task are left out of that task.
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
    probs, target = out["probs"][order], out["target"][order]
    row_ids = out["index"][order]
    label_sets: dict[str, Any] = {}
    label_sets["all"] = multilabel_auroc(target, probs, names=codes, n_bootstrap=n_bootstrap)
    for name in BENCHMARK_SETS:
        names, y_full = ptbxl.label_matrix(name)
        _, members = ptbxl.label_aggregation(name)  # (71, K) membership of each code in each task label
        y = np.asarray(y_full)[row_ids]
        scores = np.stack([probs[:, members[:, k] > 0].max(1) for k in range(len(names))], axis=1)
        keep = y.sum(1) > 0
        res = multilabel_auroc(y[keep], scores[keep], names=list(names), n_bootstrap=n_bootstrap)
        res["n_records_without_label_dropped"] = int((~keep).sum())
        label_sets[name] = res
    for branch, index in branch_label_indices(codes).items():
        label_sets[f"branch_{branch}"] = multilabel_auroc(
            target[:, index], probs[:, index], names=[codes[i] for i in index], n_bootstrap=n_bootstrap
        )
    fm, ft = fmax(target, probs)
    thresholds = module.thresholds.cpu().numpy()
    decisions = probs >= thresholds
    tp = float((decisions & (target > 0.5)).sum())
    f1_at_thresholds = 2 * tp / max(float(decisions.sum() + (target > 0.5).sum()), 1.0)
    results = {
        "split": split,
        "n_records": int(len(rows)),
        "label_sets": label_sets,
        "fmax": fm,
        "fmax_threshold": ft,
        "micro_f1_at_val_thresholds": f1_at_thresholds,
        "aggregation": "sub/superdiagnostic scores = max over member SCP codes of the 71 fused outputs",
    }
    return results, {"ecg_id": np.asarray(ptbxl.ecg_ids)[row_ids], "probs": probs, "target": target}


def benchmark_table(results: dict[str, Any]) -> str:
    """Markdown table in the PTB-XL benchmark's format: macro-AUC (95% bootstrap half-width in thousandths)."""
    lines = [
        f"Split: {results['split']} ({results['n_records']} records); macro-AUROC over the whole fold.",
        "",
        "| Task (#labels) | medml ProtoECGNet | best PTB-XL benchmark (Strodthoff 2020) | ProtoECGNet paper |",
        "|---|---|---|---|",
    ]
    for name in ("all", *BENCHMARK_SETS):
        res = results["label_sets"][name]
        k = len(res["per_label"]) + len(res["skipped"])
        lo, hi = res["macro_ci"]
        half = (hi - lo) / 2 if np.isfinite(lo) and np.isfinite(hi) else float("nan")
        ours = f"{res['macro']:.3f}({half * 1000:02.0f})" if np.isfinite(res["macro"]) else "n/a"
        model, value = BENCHMARK_BEST[name]
        paper = f"{PROTOECGNET_PUBLISHED[name]:.3f} (V3, unverified)" if name in PROTOECGNET_PUBLISHED else "not found"
        scored = f"; {len(res['per_label'])} scored" if res["skipped"] else ""
        lines.append(f"| {name} ({k}{scored}) | {ours} | {model} {value:.3f} | {paper} |")
    lines += [
        "",
        f"Fmax (micro, 71 labels): {results['fmax']:.3f} at threshold {results['fmax_threshold']:.2f}",
        "",
        f"{PROTOECGNET_PUBLISHED_NOTE}. Best PTB-XL benchmark: Strodthoff et al. 2020, V1 (official "
        "README of helme/ecg_ptbxl_benchmarking).",
    ]
    return "\n".join(lines) + "\n"
