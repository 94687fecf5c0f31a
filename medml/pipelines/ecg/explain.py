"""Case-based explanations for ProtoECGNet predictions, and their figures.

A fused logit is ``b_c + sum_j W[c, j] * s_j`` over the 1037 prototype similarities, so the contribution of
prototype j to label c is ``s_j * W[c, j]``. For each positive label the prototypes with the largest contributions
are listed with the training ECG they were projected onto (ecg_id, record path, time window) and, for the
time-localised morphology prototypes, the window of the query ECG that matched best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from medml.io.types import STANDARD_LEADS
from medml.utils.figures import save_figure

COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def prototype_table(module) -> list[dict[str, Any]]:
    """One entry per prototype in fused order (rhythm, morphology, global): branch, own label and provenance."""
    labels = module.label_names
    rows = []
    for name in module.model.branch_names:
        branch = module.model.branches[name]
        label_index = module.model.label_index(name).cpu()
        fs = module.config.data.sampling_rate
        paths = branch.projection_paths()
        classes = branch.prototype_class().cpu()
        for p in range(branch.num_prototypes):
            start = int(branch.projection_start[p])
            length = branch.segment_length
            ecg_id = int(branch.projection_ecg_id[p])
            rows.append(
                {
                    "branch": name,
                    "prototype": p,
                    "label": labels[int(label_index[classes[p]])],
                    "source_ecg_id": ecg_id if ecg_id >= 0 else None,
                    "source_record": paths[p] or None,
                    "source_window_s": [round(start / fs, 3), round((start + length) / fs, 3)] if ecg_id >= 0 else None,
                    "projection_similarity": float(branch.projection_similarity[p]) if ecg_id >= 0 else None,
                }
            )
    return rows


def explain_sample(
    module,
    outputs: dict[str, torch.Tensor],
    probs: np.ndarray,
    thresholds: np.ndarray,
    fs: float,
    table: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Explanation of one ECG from its model outputs (``module(signal)`` entries for that sample).

    Returns ``{"labels": [...]}``: one entry per positive label (highest probability first, at most
    ``model.explain_max_labels``; the top label alone, marked ``positive: false``, when none is positive), each
    with its ``prototypes``: similarity, fusion weight, contribution, source training record and time windows.
    ``table`` is `prototype_table` (computed here when not given; pass it when explaining many ECGs).
    """
    cfg = module.config.model
    table = table if table is not None else prototype_table(module)
    similarity = outputs["similarity"].numpy()
    weight = module.model.fusion.weight.detach().float().cpu().numpy()
    offsets, start = {}, 0
    for name in module.model.branch_names:
        offsets[name] = start
        start += module.model.branches[name].num_prototypes
    labels = module.label_names
    order = [int(j) for j in np.argsort(-probs)]
    positive = [j for j in order if probs[j] >= thresholds[j]][: cfg.explain_max_labels]
    chosen = positive or order[:1]
    seconds = module.config.data.seconds
    explained = []
    # Only projected prototypes are cases one can show; prototypes of classes without a training positive (never
    # the case on real PTB-XL) are left out of the ranking and their summed contribution is reported instead.
    projected = np.array([row["source_ecg_id"] is not None for row in table])
    for c in chosen:
        contribution = similarity * weight[c]
        ranked = [j for j in np.argsort(-contribution) if projected[j]]
        top = ranked[: cfg.explain_top_k]
        protos = []
        for j in top:
            info = dict(table[int(j)])
            branch = module.model.branches[info["branch"]]
            query = [0.0, float(seconds)]
            if branch.kind == "2d" and branch.prototype_length < branch.latent_length:
                windows = outputs[f"{info['branch']}/window_similarity"][info["prototype"]]
                w = int(windows.argmax())
                s = branch.raw_start(w)
                query = [round(s / fs, 3), round((s + branch.segment_length) / fs, 3)]
            info.update(
                index=int(j),
                similarity=float(similarity[j]),
                weight=float(weight[c, j]),
                contribution=float(contribution[j]),
                query_window_s=query,
            )
            protos.append(info)
        explained.append(
            {
                "label": labels[c],
                "probability": float(probs[c]),
                "threshold": float(thresholds[c]),
                "positive": bool(probs[c] >= thresholds[c]),
                "bias": float(module.model.fusion.bias[c].detach()),
                "unprojected_contribution": float(contribution[~projected].sum()),
                "prototypes": protos,
            }
        )
    return {"labels": explained, "n_positive": len(positive)}


def _plot_leads(
    ax, signal: np.ndarray, fs: float, spacing: float = 2.0, colour: str = "black", lw: float = 0.6, t0: float = 0.0
) -> None:
    t = t0 + np.arange(signal.shape[1]) / fs
    for i in range(signal.shape[0]):
        ax.plot(t, signal[i] - i * spacing, color=colour, lw=lw)
    ax.set_yticks([-i * spacing for i in range(signal.shape[0])])
    ax.set_yticklabels(STANDARD_LEADS[: signal.shape[0]], fontsize=6)
    ax.set_xlim(t[0], t[-1] if len(t) > 1 else 1)
    ax.tick_params(axis="x", labelsize=6)


def prototype_segments(module, explanation: dict[str, Any]) -> dict[str, np.ndarray]:
    """The stored training segment (12, n) of every prototype an explanation lists, keyed ``"branch#index"``."""
    out = {}
    for label in explanation["labels"]:
        for proto in label["prototypes"]:
            branch = module.model.branches[proto["branch"]]
            key = f"{proto['branch']}#{proto['prototype']}"
            out[key] = branch.projection_segment[proto["prototype"]].float().cpu().numpy()
    return out


def explanation_figure(
    signal: np.ndarray,
    fs: float,
    explanation: dict[str, Any],
    path: str | Path,
    segments: dict[str, np.ndarray],
    max_prototypes: int = 3,
) -> Path:
    """The 12-lead ECG with matched windows highlighted (left) beside the prototypes' training segments (right).

    ``segments`` (from `prototype_segments`) come from the checkpoint's ``projection_segment`` buffers, so the
    figure needs no access to the training data.
    """
    entries = []
    for label in explanation["labels"]:
        for proto in label["prototypes"]:
            entries.append((label["label"], proto))
    entries = entries[:max_prototypes]
    fig = plt.figure(figsize=(14, 7))
    grid = fig.add_gridspec(max(1, len(entries)), 2, width_ratios=(2.2, 1.0))
    ax = fig.add_subplot(grid[:, 0])
    _plot_leads(ax, signal, fs)
    for k, (label, proto) in enumerate(entries):
        lo, hi = proto["query_window_s"]
        ax.axvspan(
            lo,
            hi,
            color=COLOURS[k % len(COLOURS)],
            alpha=0.15 if hi - lo < 5 else 0.05,
            label=f"{label}: {proto['branch']} #{proto['prototype']} (sim {proto['similarity']:.2f})",
        )
    title = ", ".join(f"{lab['label']} {lab['probability']:.2f}" for lab in explanation["labels"][:4])
    ax.set_title(f"{explanation.get('case_id', '')}  {title}", fontsize=9)
    ax.set_xlabel("time (s)", fontsize=7)
    if entries:
        ax.legend(fontsize=6, loc="upper right")
    for k, (label, proto) in enumerate(entries):
        pax = fig.add_subplot(grid[k, 1])
        segment = segments.get(f"{proto['branch']}#{proto['prototype']}", np.zeros((12, 2), np.float32))
        window = proto.get("source_window_s") or [0, 0]
        _plot_leads(pax, segment, fs, spacing=2.0, colour=COLOURS[k % len(COLOURS)], lw=0.5, t0=window[0])
        pax.tick_params(axis="y", labelsize=4)
        pax.set_title(
            f"{label} <- {proto['branch']} #{proto['prototype']} ({proto['label']} prototype): ecg_id "
            f"{proto.get('source_ecg_id')}, {window[0]:.2f}-{window[1]:.2f} s",
            fontsize=7,
        )
    return save_figure(fig, path, dpi=90)


def prototype_gallery(module, path: str | Path, per_branch: int = 4) -> Path:
    """Projected prototypes of each branch: the training segment each one was pushed onto, with its provenance."""
    table = prototype_table(module)
    fs = module.config.data.sampling_rate
    names = module.model.branch_names
    fig, axes = plt.subplots(len(names), per_branch, figsize=(3.2 * per_branch, 3.2 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        branch = module.model.branches[name]
        rows = [t for t in table if t["branch"] == name and t["source_ecg_id"] is not None]
        # one prototype per class first, so the gallery shows several labels
        seen, picked = set(), []
        for t in rows:
            if t["label"] not in seen:
                seen.add(t["label"])
                picked.append(t)
        picked = (picked + [t for t in rows if t not in picked])[:per_branch]
        for c in range(per_branch):
            ax = axes[r, c]
            if c >= len(picked):
                ax.axis("off")
                continue
            t = picked[c]
            segment = branch.projection_segment[t["prototype"]].float().cpu().numpy()
            _plot_leads(
                ax, segment, fs, spacing=2.0, colour=COLOURS[c % len(COLOURS)], lw=0.5, t0=t["source_window_s"][0]
            )
            ax.tick_params(axis="y", labelsize=4)
            ax.set_title(
                f"{name} #{t['prototype']} {t['label']}\necg_id {t['source_ecg_id']} "
                f"{t['source_window_s'][0]:.1f}-{t['source_window_s'][1]:.1f} s",
                fontsize=7,
            )
    return save_figure(fig, path, dpi=80)
