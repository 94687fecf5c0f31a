"""Segmentation metrics from MONAI: Dice, IoU and HD95 per class, with the conventions medml reports."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
from monai.networks.utils import one_hot


def segmentation_scores(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    include_background: bool = False,
    ignore_index: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Dice, IoU and 95th-percentile Hausdorff distance per class for one label map (2D or 3D).

    Args:
        pred, target: integer label maps of the same shape (H, W) or (D, H, W).
        num_classes: classes including background (id 0).
        spacing: pixel spacing for HD95 in physical units; pixels when ``None``.
        include_background: score class 0 too.
        ignore_index: pixels with this target value are excluded from every metric (set to background in both).
        class_names: names for the result keys; ``class_<id>`` otherwise.

    Returns:
        ``{name: {"dice", "iou", "hd95", "present"}}`` for each scored class, plus ``"mean"`` over classes present
        in the target or the prediction. A class absent from both is reported with NaN (not scored, not counted).
        A class absent from one of them scores Dice 0 and HD95 NaN (no surface to measure) — MONAI's conventions.
    """
    pred_t = torch.as_tensor(np.asarray(pred)).long()
    targ_t = torch.as_tensor(np.asarray(target)).long()
    if pred_t.shape != targ_t.shape:
        raise ValueError(f"prediction {tuple(pred_t.shape)} and target {tuple(targ_t.shape)} differ in shape")
    if ignore_index is not None:
        keep = targ_t != ignore_index
        pred_t = torch.where(keep, pred_t, 0)
        targ_t = torch.where(keep, targ_t, 0)
    p1 = one_hot(pred_t[None, None], num_classes, dim=1)
    t1 = one_hot(targ_t[None, None], num_classes, dim=1)
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(p1, t1)[0]
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=True)(p1, t1)[0]
    with warnings.catch_warnings():
        # MONAI warns for every class missing from one side; such classes get NaN below, by design.
        warnings.filterwarnings("ignore", message=".* is all 0, this may result in nan/inf distance")
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p1, t1, spacing=spacing)[
            0
        ]
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(num_classes)]
    result: dict[str, Any] = {}
    first = 0 if include_background else 1
    for c in range(first, num_classes):
        in_pred, in_targ = bool(p1[0, c].any()), bool(t1[0, c].any())
        present = in_pred or in_targ
        d = float(dice[c]) if in_targ else (0.0 if in_pred else float("nan"))
        j = float(iou[c]) if in_targ else (0.0 if in_pred else float("nan"))
        h = float(hd[c]) if in_pred and in_targ else float("nan")
        result[names[c]] = {"dice": d, "iou": j, "hd95": h, "present": present}
    scored = [v for v in result.values() if v["present"]]
    result["mean"] = {
        key: float(np.nanmean([v[key] for v in scored]))
        if scored and not all(np.isnan(v[key]) for v in scored)
        else float("nan")
        for key in ("dice", "iou", "hd95")
    }
    return result
