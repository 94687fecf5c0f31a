"""Case-based explanations for ProtoECGNet predictions, and their figures.

A fused logit is ``b_c + sum_j W[c, j] * s_j`` over the 1037 prototype similarities, so the contribution of
prototype j to label c is ``s_j * W[c, j]``, and these add up to the logit exactly. The morphology branch's
similarity is the *mean* over its 30 sliding windows (spec 1.6), so its contribution is also split per window:
``W[c, j] * a_{j,w} / n_windows`` summed over its prototypes. For each positive label the label's own prototypes
with the largest contributions are listed with the training ECG they were projected onto (ecg_id, record path, time
window), the query window that matched best and the *measured* receptive field of that window (a 0.93-s latent
window sees several seconds of signal through the ResNet). Another label's prototype is listed only when it
outweighs those, with the reason it contributes. Physiologically contradictory positives are flagged.

Figures use matplotlib's object API only (`medml.pipelines.ecg.plots`): no pyplot, no backend switching.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from medml.pipelines.ecg.plots import COLOURS, LAYOUT, MM_PER_S, ROW_MM, save, segment_paper, twelve_lead_paper

#: Positive labels that cannot both hold for one 10-s ECG: flagged in every output that lists decisions.
CONTRADICTORY = (
    ("STACH", "SBRAD", "sinus tachycardia and sinus bradycardia"),
    ("SR", "AFIB", "sinus rhythm and atrial fibrillation"),
    ("SR", "AFLT", "sinus rhythm and atrial flutter"),
    ("CLBBB", "CRBBB", "complete left and complete right bundle branch block"),
    ("LVOLT", "HVOLT", "low and high QRS voltage"),
)


def contradictions(positive: list[str] | set[str]) -> list[str]:
    """The physiologically contradictory pairs among ``positive`` labels, e.g. ``"STACH+SBRAD: sinus tachycardia and
    sinus bradycardia"``; empty when there are none."""
    positive = set(positive)
    return [f"{a}+{b}: {why}" for a, b, why in CONTRADICTORY if a in positive and b in positive]


def receptive_fields(module) -> dict[str, tuple[int, int]]:
    """Measured receptive field of each time-localised branch, as samples before and after a latent window.

    The input gradient of one mid-record window's latent patch (eval mode, random input) is non-zero exactly where
    the signal can change that window; its support, minus the window's nominal span, is the extent on each side.
    Cached on the module (a property of the architecture, not of the input).
    """
    cache = module.__dict__.setdefault("_receptive_fields", {})
    for name in module.model.branch_names:
        branch = module.model.branches[name]
        if name in cache or branch.kind != "2d" or branch.prototype_length >= branch.latent_length:
            continue
        was = branch.training
        branch.eval()
        param = next(branch.parameters())
        x = torch.randn(1, 12, branch.signal_length, device=param.device, dtype=param.dtype, requires_grad=True)
        mid = (branch.latent_length - branch.prototype_length) // 2
        with torch.enable_grad():
            z = branch.latent(x)
            z[..., mid : mid + branch.prototype_length].sum().backward()
        branch.train(was)
        support = torch.nonzero(x.grad.abs().sum(1)[0] > 0).flatten()
        start = branch.raw_start(mid)
        cache[name] = (int(start - support.min()), int(support.max() + 1 - (start + branch.segment_length)))
    return cache


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

    ``probs`` are the probabilities the decisions use (the calibrated ones in prediction). Returns ``{"labels":
    [...], "n_positive", "contradictions"}``: one entry per positive label (highest probability first, at most
    ``model.explain_max_labels``; the top label alone, marked ``positive: false``, when none is positive). Each entry
    holds the label's ``logit`` = ``bias`` + the sum of ``branch_contributions`` (exactly), the morphology branch's
    per-window ``windows`` contributions (they sum to its branch contribution), the label's own ``prototypes`` with
    similarity, fusion weight, contribution, source training record, matched window and measured receptive field,
    ``other_label_prototypes`` (with ``why``) and the share of the logit's contributions the listed ones account for.
    ``table`` is `prototype_table` (computed here when not given; pass it when explaining many ECGs).
    """
    cfg = module.config.model
    table = table if table is not None else prototype_table(module)
    similarity = outputs["similarity"].double().numpy()
    weight = module.model.fusion.weight.detach().double().cpu().numpy()
    bias = module.model.fusion.bias.detach().double().cpu().numpy()
    logits = weight @ similarity + bias
    scale = module.calibration_scale.detach().double().cpu().numpy()
    shift = module.calibration_bias.detach().double().cpu().numpy()
    spans, start = {}, 0
    for name in module.model.branch_names:
        spans[name] = (start, start + module.model.branches[name].num_prototypes)
        start = spans[name][1]
    fields = receptive_fields(module)
    labels = module.label_names
    order = [int(j) for j in np.argsort(-probs)]
    positive = [j for j in order if probs[j] >= thresholds[j]][: cfg.explain_max_labels]
    chosen = positive or order[:1]
    seconds = module.config.data.seconds
    # Only projected prototypes are cases one can show; prototypes of classes without a training positive (never
    # the case on real PTB-XL) are left out of the ranking and their summed contribution is reported instead.
    projected = np.array([row["source_ecg_id"] is not None for row in table])
    explained = []
    for c in chosen:
        contribution = similarity * weight[c]
        windows = []
        for name, (lo, hi) in spans.items():
            branch = module.model.branches[name]
            if name not in fields:
                continue
            a = outputs[f"{name}/window_similarity"].double().numpy()  # (P, W); similarity = mean over W
            per_window = (weight[c, lo:hi, None] * a).sum(0) / a.shape[1]
            for w, value in enumerate(per_window):
                windows.append(
                    {
                        "branch": name,
                        "window": w,
                        "window_s": _window_s(branch, w, fs),
                        "receptive_field_s": _field_s(branch, w, fields[name], fs),
                        "contribution": float(value),
                    }
                )
        ranked = [int(j) for j in np.argsort(-contribution) if projected[j]]
        own = [j for j in ranked if table[j]["label"] == labels[c]][: cfg.explain_top_k]
        weakest = min((contribution[j] for j in own), default=0.0)
        others = [j for j in ranked if table[j]["label"] != labels[c] and contribution[j] > max(weakest, 0.0)][:2]
        protos = [
            _prototype_entry(module, table, outputs, j, c, contribution, weight, fields, fs, seconds) for j in own
        ]
        other_protos = []
        for j in others:
            entry = _prototype_entry(module, table, outputs, j, c, contribution, weight, fields, fs, seconds)
            entry["why"] = (
                f"a {entry['label']} prototype, not a {labels[c]} case: the fusion layer learned weight "
                f"{entry['weight']:+.2f} from its similarity to {labels[c]} (the labels co-occur or share morphology "
                "in the training folds), so it raises this logit"
            )
            other_protos.append(entry)
        shown = own + others
        total_abs = float(np.abs(contribution).sum())
        explained.append(
            {
                "label": labels[c],
                "probability": float(probs[c]),
                "raw_probability": float(1.0 / (1.0 + np.exp(-logits[c]))),
                "threshold": float(thresholds[c]),
                "positive": bool(probs[c] >= thresholds[c]),
                "logit": float(logits[c]),
                "bias": float(bias[c]),
                "calibration": {"scale": float(scale[c]), "bias": float(shift[c])},
                "branch_contributions": {n: float(contribution[lo:hi].sum()) for n, (lo, hi) in spans.items()},
                "windows": windows,
                "shown_contribution": float(contribution[shown].sum()) if shown else 0.0,
                "shown_share_of_abs_contributions": float(np.abs(contribution[shown]).sum() / total_abs)
                if total_abs
                else 0.0,
                "unprojected_contribution": float(contribution[~projected].sum()),
                "prototypes": protos,
                "other_label_prototypes": other_protos,
            }
        )
    positive_names = [labels[j] for j in positive]
    return {"labels": explained, "n_positive": len(positive), "contradictions": contradictions(positive_names)}


def _window_s(branch, w: int, fs: float) -> list[float]:
    s = branch.raw_start(w)
    return [round(s / fs, 3), round((s + branch.segment_length) / fs, 3)]


def _field_s(branch, w: int, field: tuple[int, int], fs: float) -> list[float]:
    s = branch.raw_start(w)
    lo, hi = max(0, s - field[0]), min(branch.signal_length, s + branch.segment_length + field[1])
    return [round(lo / fs, 3), round(hi / fs, 3)]


def _prototype_entry(module, table, outputs, j, c, contribution, weight, fields, fs, seconds) -> dict[str, Any]:
    info = dict(table[int(j)])
    branch = module.model.branches[info["branch"]]
    query, field = [0.0, float(seconds)], [0.0, float(seconds)]
    window_contributions = None
    if info["branch"] in fields:
        windows = outputs[f"{info['branch']}/window_similarity"][info["prototype"]].double().numpy()
        w = int(windows.argmax())
        query = _window_s(branch, w, fs)
        field = _field_s(branch, w, fields[info["branch"]], fs)
        window_contributions = [float(weight[c, j] * a / len(windows)) for a in windows]
    info.update(
        index=int(j),
        own_label=info["label"] == module.label_names[c],
        similarity=float(outputs["similarity"][j]),
        weight=float(weight[c, j]),
        contribution=float(contribution[j]),
        query_window_s=query,
        receptive_field_s=field,
        receptive_field_seconds=round(field[1] - field[0], 3),
        window_contributions=window_contributions,
    )
    return info


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
    """The ECG on standard paper (3 x 4 + lead II rhythm strip, 25 mm/s, 10 mm/mV) with the explanation on it:
    the first label's per-window morphology contributions shaded on the rhythm strip (red raises the logit, blue
    lowers it), each shown prototype's matched window shaded on every lead and its measured receptive field drawn
    under the strip; then each prototype's training segment on the same paper with how much it contributes.

    ``segments`` (from `prototype_segments`) come from the checkpoint's ``projection_segment`` buffers, so the
    figure needs no access to the training data.
    """
    # round-robin over the explained labels: each label's strongest own prototype first, then the next ones
    lists = [[(lab, p) for p in lab["prototypes"] + lab["other_label_prototypes"]] for lab in explanation["labels"]]
    entries = [x[rank] for rank in range(max((len(x) for x in lists), default=0)) for x in lists if rank < len(x)]
    entries = entries[:max_prototypes]
    seconds = signal.shape[1] / fs
    paper_h = ROW_MM * (len(LAYOUT) + 1) + 6
    head_h, note_h = 22.0, 6.0 * max(1, len(explanation["labels"][:4])) + 4
    rows = []
    for _, proto in entries:
        seg = segments.get(f"{proto['branch']}#{proto['prototype']}", np.zeros((12, 2), np.float32))
        rows.append((seg, ROW_MM * len(LAYOUT) if seg.shape[1] / fs < 2.5 else ROW_MM))
    width = 8.0 + seconds * MM_PER_S + 12
    height = head_h + paper_h + note_h + sum(h + 14 for _, h in rows) + 4
    fig = Figure(figsize=(width / 25.4, height / 25.4))

    def axes(x: float, y: float, w: float, h: float):
        return fig.add_axes([x / width, 1 - (y + h) / height, w / width, h / height])

    # the windows shaded on the rhythm strip: of the label whose morphology branch contributes most
    first = max(
        explanation["labels"], key=lambda lab: abs(lab["branch_contributions"].get("morphology", 0.0)), default=None
    )
    strip = []
    if first is not None and first["windows"]:
        values = np.array([w["contribution"] for w in first["windows"]])
        top = float(np.abs(values).max()) or 1.0
        for win, v in zip(first["windows"], values):
            lo, hi = win["window_s"]
            step = (hi - lo) / 3  # draw each window at its centre latent step so neighbours do not overlap
            strip.append(
                {
                    "t0": lo + step,
                    "t1": lo + 2 * step,
                    "colour": "red" if v > 0 else "blue",
                    "alpha": 0.35 * abs(v) / top,
                }
            )
    spans = []
    for k, (_, proto) in enumerate(entries):
        lo, hi = proto["query_window_s"]
        if hi - lo < seconds - 1e-6:
            spans.append({"t0": lo, "t1": hi, "colour": COLOURS[k % len(COLOURS)], "alpha": 0.22})
    ax = axes(2, head_h, width - 4, paper_h)
    twelve_lead_paper(ax, signal, fs, spans=spans, strip_spans=strip)
    strip_base = paper_h - ROW_MM * (len(LAYOUT) + 0.6)
    for k, (_, proto) in enumerate(entries):
        lo, hi = proto["receptive_field_s"]
        if hi - lo < seconds - 1e-6:
            y = strip_base - 11 - 1.5 * k
            ax.plot([8 + lo * MM_PER_S, 8 + hi * MM_PER_S], [y, y], color=COLOURS[k % len(COLOURS)], lw=1.5)
    data = explanation.get("model_note", "")
    flags = explanation.get("contradictions") or []
    title = f"{explanation.get('case_id', '')}  " + ", ".join(
        f"{lab['label']} {lab['probability']:.2f}{'' if lab['positive'] else ' (below threshold)'}"
        for lab in explanation["labels"][:6]
    )
    fig.text(0.01, 1 - 6 / height, title, fontsize=10, fontweight="bold", va="top")
    if data:
        fig.text(0.01, 1 - 12 / height, data, fontsize=8, va="top")
    if flags:
        fig.text(0.01, 1 - 17 / height, "CONTRADICTORY: " + "; ".join(flags), fontsize=8, color="red", va="top")
    y = head_h + paper_h + 2
    for lab in explanation["labels"][:4]:
        parts = " + ".join(f"{n} {v:+.2f}" for n, v in lab["branch_contributions"].items())
        fig.text(
            0.01,
            1 - (y + 4) / height,
            f"{lab['label']}: logit {lab['logit']:+.2f} = bias {lab['bias']:+.2f} + {parts}; listed prototypes: "
            f"{100 * lab['shown_share_of_abs_contributions']:.0f}% of |contributions|"
            + (
                "; shading on the rhythm strip: its morphology windows (red up, blue down)"
                if lab is first and strip
                else ""
            ),
            fontsize=7,
            va="top",
        )
        y += 6
    y += 4
    for k, ((label, proto), (seg, h)) in enumerate(zip(entries, rows)):
        colour = COLOURS[k % len(COLOURS)]
        window = proto.get("source_window_s") or [0.0, 0.0]
        why = "" if proto.get("own_label", True) else f" - other label's prototype ({proto['label']}): see 'why'"
        fig.text(
            0.01,
            1 - (y + 4) / height,
            f"[{k + 1}] {label['label']} <- {proto['branch']} #{proto['prototype']} ({proto['label']} prototype){why}: "
            f"training ecg_id {proto.get('source_ecg_id')}, {window[0]:.2f}-{window[1]:.2f} s; similarity "
            f"{proto['similarity']:.2f} x weight {proto['weight']:+.2f} = {proto['contribution']:+.2f}; matched "
            f"{proto['query_window_s'][0]:.2f}-{proto['query_window_s'][1]:.2f} s, receptive field "
            f"{proto['receptive_field_s'][0]:.2f}-{proto['receptive_field_s'][1]:.2f} s",
            fontsize=7,
            color=colour,
            va="top",
        )
        w_mm = (seg.shape[1] / fs) * MM_PER_S + 4
        w_mm = w_mm * 4 if seg.shape[1] / fs < 2.5 else w_mm - 2
        segment_paper(axes(2, y + 8, w_mm, h), seg, fs, window[0], colour=colour)
        y += h + 14
    return save(fig, path, dpi=100)


def prototype_gallery(module, path: str | Path, per_branch: int = 4) -> Path:
    """Projected prototypes of each branch: the training segment each one was pushed onto (on ECG paper), with its
    provenance."""
    table = prototype_table(module)
    fs = module.config.data.sampling_rate
    names = module.model.branch_names
    fig = Figure(figsize=(3.6 * per_branch, 2.6 * len(names)))
    axes = fig.subplots(len(names), per_branch, squeeze=False)
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
            segment_paper(ax, segment, fs, t["source_window_s"][0], colour=COLOURS[c % len(COLOURS)])
            ax.set_title(
                f"{name} #{t['prototype']} {t['label']}\necg_id {t['source_ecg_id']} "
                f"{t['source_window_s'][0]:.1f}-{t['source_window_s'][1]:.1f} s",
                fontsize=7,
            )
    fig.tight_layout()
    return save(fig, path, dpi=80)
