"""Clinical outputs of the ``dental`` pipeline for one panoramic: COCO-style results, the DENTEX challenge's
submission JSON, a DICOM SR with one planar region per abnormal tooth, and the overlay figure a dentist reads.

Detections are ``{"boxes": (N, 4) xyxy pixels of the source image, "labels": (N, 3) quadrant, tooth, diagnosis
indices, "scores": (N,) or (N, 3)}``, optionally ``"probs"`` (N, 3) with each level's probability of its label.
A box's single score, as in the challenge, is its diagnosis probability. Outputs carry no patient identifiers (the SR,
as every DICOM object, belongs to the source's patient and study through the copied modules and UIDs).

Coded concepts: SNOMED CT codes for the four DENTEX diagnoses and for single teeth were not verified here, so the
diagnoses, the teeth (by FDI number) and the probabilities use medml-local codes in a private coding scheme ("99"
prefix, DICOM PS3.3 8.2), as the fundus pipeline does for its segments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch, Rectangle

from medml.data.dentex import DIAGNOSES, LEVELS, QUADRANTS, TEETH, fdi_code
from medml.io.codes import CodeTuple
from medml.io.reports import write_report_json
from medml.io.sr import RegionFinding, write_dicom_sr_regions
from medml.utils.figures import figure, save_figure

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), one per diagnosis.
DIAGNOSIS_COLOURS = {
    "Impacted": "#0072B2",
    "Caries": "#E69F00",
    "Periapical Lesion": "#009E73",
    "Deep Caries": "#CC79A7",
}
DIAGNOSIS_CODES: dict[str, CodeTuple] = {
    "Impacted": ("DENT-IMPACTED", "99MEDML", "Impacted tooth"),
    "Caries": ("DENT-CARIES", "99MEDML", "Dental caries"),
    "Periapical Lesion": ("DENT-PERIAPICAL", "99MEDML", "Periapical lesion"),
    "Deep Caries": ("DENT-DEEPCARIES", "99MEDML", "Deep dental caries"),
}
ABNORMAL_TOOTH: CodeTuple = ("DENT-ABNORMAL", "99MEDML", "Abnormal tooth")
PROBABILITY_CODES: dict[str, CodeTuple] = {
    "quadrant": ("DENT-P-QUADRANT", "99MEDML", "Probability of the quadrant"),
    "enumeration": ("DENT-P-TOOTH", "99MEDML", "Probability of the tooth position"),
    "diagnosis": ("DENT-P-DIAGNOSIS", "99MEDML", "Probability of the diagnosis"),
}
SUBMISSION_NAME = "Regions of interest"
SUBMISSION_TYPE = "Multiple 2D bounding boxes"


def tooth_code(fdi: int) -> CodeTuple:
    """The finding-site concept of a tooth by its FDI number."""
    return (f"FDI-{int(fdi)}", "99MEDML", f"Tooth {int(fdi)} (FDI)")


def as_detections(detections: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Detections with ``boxes`` (N, 4) float, ``labels`` (N, 3) int, ``score`` (N,) (the diagnosis probability) and
    ``level_scores`` (N, 3), whatever score layout came in."""
    boxes = np.asarray(detections["boxes"], np.float64).reshape(-1, 4)
    labels = np.asarray(detections["labels"], np.int64).reshape(-1, 3)
    if "score" in detections and "level_scores" in detections:  # already normalised
        return {"boxes": boxes, "labels": labels, "score": np.asarray(detections["score"], np.float64).reshape(-1),
                "level_scores": np.asarray(detections["level_scores"], np.float64).reshape(-1, 3)}  # fmt: skip
    scores = np.asarray(detections["scores"], np.float64)
    if "probs" in detections:
        level = np.asarray(detections["probs"], np.float64).reshape(-1, 3)
        score = scores.reshape(-1) if scores.ndim == 1 else level[:, 2]
    elif scores.ndim == 2:
        level = scores.reshape(-1, 3)
        score = level[:, 2]
    else:
        score = scores.reshape(-1)
        level = np.repeat(score[:, None], 3, axis=1)
    if not len(boxes) == len(labels) == len(score) == len(level):
        raise ValueError("boxes, labels and scores differ in length")
    return {"boxes": boxes, "labels": labels, "score": score, "level_scores": level}


def box_records(detections: Mapping[str, Any], image_id: int | str = 0) -> list[dict[str, Any]]:
    """COCO results, one dict per box, best first: ``image_id``, ``bbox`` [x, y, w, h], ``score`` (diagnosis
    probability), ``category_id`` (= diagnosis), HierarchicalDet's ``category_id_1/2/3``, and readable ``quadrant``,
    ``tooth``, ``fdi``, ``diagnosis`` and per-level ``scores``."""
    det = as_detections(detections)
    records = []
    for i in np.argsort(-det["score"], kind="stable"):
        (x1, y1, x2, y2), (q, t, d) = det["boxes"][i], det["labels"][i]
        records.append(
            {
                "image_id": image_id,
                "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
                "score": round(float(det["score"][i]), 5),
                "category_id": int(d),
                "category_id_1": int(q),
                "category_id_2": int(t),
                "category_id_3": int(d),
                "quadrant": QUADRANTS[q],
                "tooth": TEETH[t],
                "fdi": fdi_code(q, t),
                "diagnosis": DIAGNOSES[d],
                "scores": {level: round(float(v), 5) for level, v in zip(LEVELS, det["level_scores"][i], strict=True)},
            }
        )
    return records


def submission_boxes(detections: Mapping[str, Any], z: int = 0) -> list[dict[str, Any]]:
    """The challenge's boxes of one image (spec §2.6): ``name`` "q - n - d" (class indices, which are the ids of
    ``validation_triple.json``'s ``categories_1/2/3``), ``corners`` [[x1, y1, z], [x1, y2, z], [x2, y1, z],
    [x2, y2, z]] (the evaluator reads corners 0 and 3), ``probability``; ``z`` is the image's slice index."""
    det = as_detections(detections)
    out = []
    for i in np.argsort(-det["score"], kind="stable"):
        x1, y1, x2, y2 = (round(float(v), 2) for v in det["boxes"][i])
        q, t, d = (int(v) for v in det["labels"][i])
        out.append(
            {
                "name": f"{q} - {t} - {d}",
                "corners": [[x1, y1, z], [x1, y2, z], [x2, y1, z], [x2, y2, z]],
                "probability": round(float(det["score"][i]), 5),
            }
        )
    return out


def challenge_submission(images: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """The challenge's output JSON for (slice index, detections) pairs (one pair for a single image)."""
    boxes = [box for z, det in images for box in submission_boxes(det, z)]
    return {"name": SUBMISSION_NAME, "type": SUBMISSION_TYPE, "boxes": boxes, "version": {"major": 1, "minor": 0}}


def parse_challenge_submission(doc: Mapping[str, Any]) -> dict[int, dict[str, np.ndarray]]:
    """Per slice index, detections read back from a submission as the challenge's evaluator reads them: labels from
    ``name.split("-")``, the box from corners 0 and 3, the score from ``probability``."""
    found: dict[int, list[tuple[list[float], list[int], float]]] = {}
    for box in doc["boxes"]:
        (x1, y1, z), (x2, y2, _) = box["corners"][0][:3], box["corners"][3][:3]
        labels = [int(part) for part in str(box["name"]).split("-")]
        found.setdefault(int(z), []).append(([x1, y1, x2, y2], labels, float(box["probability"])))
    return {
        z: {
            "boxes": np.array([r[0] for r in rows], np.float64).reshape(-1, 4),
            "labels": np.array([r[1] for r in rows], np.int64).reshape(-1, 3),
            "scores": np.array([r[2] for r in rows], np.float64),
        }
        for z, rows in found.items()
    }


def above(detections: Mapping[str, Any], threshold: float) -> dict[str, np.ndarray]:
    """`as_detections` restricted to boxes whose diagnosis probability is at least ``threshold``."""
    det = as_detections(detections)
    keep = det["score"] >= threshold
    return {k: v[keep] for k, v in det.items()}


def findings_text(detections: Mapping[str, Any], threshold: float = 0.0) -> list[str]:
    """One line per box above the threshold, by FDI number: ``"36 Deep Caries 0.84"``."""
    det = above(detections, threshold)
    rows = sorted(
        (fdi_code(q, t), DIAGNOSES[d], float(s)) for (q, t, d), s in zip(det["labels"], det["score"], strict=True)
    )
    return [f"{fdi} {name} {score:.2f}" for fdi, name, score in rows]


def sr_findings(detections: Mapping[str, Any], threshold: float) -> list[RegionFinding]:
    """`RegionFinding` per box above the threshold: diagnosis, tooth site, the three level probabilities."""
    det = above(detections, threshold)
    findings = []
    for box, (q, t, d), level in zip(det["boxes"], det["labels"], det["level_scores"], strict=True):
        fdi, name = fdi_code(q, t), DIAGNOSES[d]
        findings.append(
            RegionFinding(
                finding=DIAGNOSIS_CODES[name],
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                label=f"{fdi} {name}",
                site=tooth_code(fdi),
                measurements=tuple((PROBABILITY_CODES[lvl], float(p)) for lvl, p in zip(LEVELS, level, strict=True)),
            )
        )
    return findings


def write_dental_sr(
    source: Any, detections: Mapping[str, Any], path: str | Path, *, threshold: float = 0.3, **kwargs: Any
) -> Path:
    """DICOM SR (TID 1500) with a planar region on ``source`` per abnormal tooth above ``threshold``; with none, the
    image-level evaluation "Abnormal tooth: Absent"."""
    findings = sr_findings(detections, threshold)
    kwargs.setdefault("algorithm_name", "medml HierarchicalDet")
    return write_dicom_sr_regions(source, findings, path, absent=() if findings else (ABNORMAL_TOOTH,), **kwargs)


def overlay_figure(
    image: np.ndarray,
    detections: Mapping[str, Any],
    path: str | Path,
    *,
    title: str = "",
    threshold: float = 0.3,
    dpi: int = 100,
) -> Path:
    """The panoramic with each abnormal tooth boxed in its diagnosis colour and labelled "FDI diagnosis probability"
    (labels above the box in the upper arch, below it in the lower), the patient's sides marked, a legend with counts
    per diagnosis and, under the image, the findings listed by FDI number."""
    det = above(detections, threshold)
    image = np.asarray(image)
    height, width = image.shape[:2]
    fig_w = 14.0
    fig = figure(figsize=(fig_w, fig_w * height / width + 1.6))
    ax = fig.subplots()
    ax.imshow(image, cmap="gray", vmin=0, vmax=1 if image.dtype.kind == "f" else None)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, box in enumerate(det["boxes"]):
        groups.setdefault(tuple(int(round(v)) for v in box), []).append(i)  # one tooth, several diagnoses
    px = width / (fig_w * dpi * 0.97)  # image pixels per figure pixel (equal aspect, near full width)
    line = 8 * 1.6 * dpi / 72 * px  # label height, 8 pt text with padding
    placed: list[tuple[float, float, float, float]] = []  # label rectangles so far (x1, y1, x2, y2)
    for members in sorted(groups.values(), key=lambda m: det["boxes"][m[0]][0]):
        members.sort(key=lambda i: -det["score"][i])
        x1, y1, x2, y2 = det["boxes"][members[0]]
        for k, i in enumerate(members):
            colour = DIAGNOSIS_COLOURS[DIAGNOSES[det["labels"][i][2]]]
            inset = 2.5 * k * px  # nested rectangles keep every diagnosis colour visible
            ax.add_patch(
                Rectangle((x1 + inset, y1 + inset), x2 - x1 - 2 * inset, y2 - y1 - 2 * inset, fill=False,
                          edgecolor=colour, linewidth=2.0)
            )  # fmt: skip
        q, t, _ = det["labels"][members[0]]
        text = f"{fdi_code(q, t)} " + " + ".join(
            f"{DIAGNOSES[det['labels'][i][2]]} {det['score'][i]:.2f}" for i in members
        )
        half = len(text) * 8 * 0.62 * dpi / 72 * px / 2
        upper = (y1 + y2) / 2 < height / 2
        cx = (x1 + x2) / 2
        for level in range(len(placed) + 1):  # the first free line above (upper arch) or below (lower arch) the box
            y = y1 - 3 * px - level * line if upper else y2 + 3 * px + level * line
            rect = (cx - half, y - line, cx + half, y) if upper else (cx - half, y, cx + half, y + line)
            if not any(rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3] for r in placed):
                break
        placed.append(rect)
        ax.text(
            cx,
            y,
            text,
            color="white",
            fontsize=8,
            fontweight="bold",
            ha="center",
            va="bottom" if upper else "top",
            bbox={"facecolor": DIAGNOSIS_COLOURS[DIAGNOSES[det["labels"][members[0]][2]]], "alpha": 0.85,
                  "pad": 1.5, "edgecolor": "none"},
            clip_on=True,
        )  # fmt: skip
    for x, side in ((0.01, "R"), (0.99, "L")):  # radiographic convention: the patient's right on the viewer's left
        ax.text(x, 0.5, side, transform=ax.transAxes, color="yellow", fontsize=14, fontweight="bold",
                ha="left" if x < 0.5 else "right", va="center")  # fmt: skip
    counts = {name: int((det["labels"][:, 2] == d).sum()) for d, name in enumerate(DIAGNOSES)}
    handles = [Patch(facecolor="none", edgecolor=DIAGNOSIS_COLOURS[n], linewidth=2, label=f"{n} ({counts[n]})")
               for n in DIAGNOSES]  # fmt: skip
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=4, fontsize=10, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    lines = findings_text(det)
    listing = "   ".join(lines) if lines else "no abnormal tooth found"
    fig.text(0.5, 0.01, f"Findings (probability >= {threshold:.2f}): {listing}", ha="center", va="bottom",
             fontsize=9, wrap=True)  # fmt: skip
    heading = f"{title}   " if title else ""
    ax.set_title(f"{heading}{len(lines)} abnormal-tooth finding(s)   [research use only]", fontsize=12)
    return save_figure(fig, path, dpi=dpi)


def case_row(detections: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """The ``predictions.csv`` columns of one panoramic: counts per diagnosis and the findings by FDI number."""
    det = above(detections, threshold)
    row: dict[str, Any] = {"n_findings": int(len(det["score"]))}
    for d, name in enumerate(DIAGNOSES):
        row[f"n_{name.lower().replace(' ', '_')}"] = int((det["labels"][:, 2] == d).sum())
    row["findings"] = "; ".join(findings_text(det))
    return row


def write_case_outputs(
    config: Any, case: Any, sample: Mapping[str, Any], output: Mapping[str, Any], out_dir: str | Path
) -> dict[str, Any]:
    """Every output of one predicted panoramic into ``out_dir``: ``detections.json`` (COCO results, all boxes),
    ``submission.json`` (the challenge's format), ``overlay.png``, and ``findings_sr.dcm`` for a DICOM source.
    Returns the case's ``predictions.csv`` row.

    ``sample`` is the pipeline's loaded case (``grey`` HxW in [0, 1], ``kind``, ``source`` path, optional ``meta``);
    ``config.predict.score_threshold`` (0.3 when absent) selects the boxes of the figure, the SR and the row.
    """
    out_dir = Path(out_dir)
    threshold = float(getattr(getattr(config, "predict", None), "score_threshold", 0.3))
    case_id = str(getattr(case, "case_id", "") or Path(str(sample.get("source", "case"))).stem)
    write_report_json(box_records(output, image_id=case_id), out_dir / "detections.json")
    write_report_json(challenge_submission([(0, output)]), out_dir / "submission.json")
    overlay_figure(sample["grey"], output, out_dir / "overlay.png", title=case_id, threshold=threshold)
    row: dict[str, Any] = {"kind": sample.get("kind", getattr(case, "kind", ""))}
    meta = sample.get("meta") or {}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if meta.get(key):
            row[key] = meta[key]
    if str(row["kind"]).startswith("dicom"):
        from medml.io.dicom import read_dataset

        write_dental_sr(read_dataset(Path(sample["source"]), stop_before_pixels=True), output,
                        out_dir / "findings_sr.dcm", threshold=threshold)  # fmt: skip
    row.update(case_row(output, threshold))
    return row
