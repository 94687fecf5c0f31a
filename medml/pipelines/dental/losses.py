"""SimOTA dynamic-k matching and the set loss of DiffusionDet with HierarchicalDet's per-level classifiers (spec §1.4,
§2.3, §2.4).

Per image and per head stage: the class cost is the mean over the image's supervised levels of the focal cost at
the GT class; cost = 5 L1 + class + 2 GIoU + 100 outside(box and centre region) (+10000 outside both); each GT takes
its k = max(1, int(sum of its top-5 IoUs)) cheapest predictions, a prediction claimed twice keeps its cheapest GT.
Loss per stage: sigmoid focal (alpha .25, gamma 2) over all N x C logits of every level the image has, L1 on
normalised xyxy and 1 - GIoU on the matched predictions, each divided by the number of matched predictions of the
batch; a level an image lacks (``levels[i, k]`` False) contributes nothing, so its classifier gets no gradient.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou, generalized_box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from medml.pipelines.dental.config import DentalLoss


def focal_cost(prob: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Focal classification cost of predicting the class whose probability is ``prob``."""
    prob = prob.clamp(1e-8, 1 - 1e-8)
    pos = alpha * (1 - prob) ** gamma * (-prob.log())
    neg = (1 - alpha) * prob**gamma * (-(1 - prob).log())
    return pos - neg


def dynamic_k_match(cost: torch.Tensor, iou: torch.Tensor, ota_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SimOTA assignment. ``cost``/``iou``: (N predictions, G GT). Returns (selected (N,) bool, gt index (N,) long,
    meaningful where selected). Every GT gets at least one prediction; a prediction at most one GT."""
    n, g = cost.shape
    cost = cost.clone()
    matching = torch.zeros_like(cost, dtype=torch.bool)
    topk = iou.topk(min(ota_k, n), dim=0).values
    ks = topk.sum(0).int().clamp(min=1, max=n).tolist()
    for j, k in enumerate(ks):
        matching[cost[:, j].topk(k, largest=False).indices, j] = True

    def resolve():
        multi = matching.sum(1) > 1
        if multi.any():
            best = cost[multi].argmin(dim=1)
            matching[multi] = False
            matching[multi.nonzero().squeeze(1), best] = True

    resolve()
    for _ in range(g + 1):  # bounded loop: each round gives every unmatched GT its cheapest free prediction
        unmatched = ~matching.any(0)
        if not unmatched.any():
            break
        cost[matching.any(1)] += 100000.0
        cols = unmatched.nonzero().squeeze(1)
        rows = cost[:, cols].argmin(dim=0)
        matching[rows, cols] = True
        resolve()
    selected = matching.any(1)
    return selected, matching.float().argmax(dim=1)


@torch.no_grad()
def match_image(
    logits: list[torch.Tensor],
    boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    levels: list[int],
    whwh: torch.Tensor,
    cfg: DentalLoss,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match one image's predictions (logits per level (N, C_k), boxes (N, 4)) to its GT boxes (G, 4) whose labels
    (G, 3) are supervised at ``levels``."""
    n, g = boxes.shape[0], gt_boxes.shape[0]
    if g == 0:
        return torch.zeros(n, dtype=torch.bool, device=boxes.device), torch.zeros(n, dtype=torch.long)
    boxes, gt_boxes = boxes.float(), gt_boxes.float()
    cost_cls = torch.zeros(n, g, device=boxes.device)
    for k in levels:  # HierarchicalDet: sum of (1/L) x focal cost per supervised level
        prob = torch.sigmoid(logits[k].float())[:, gt_labels[:, k]]
        cost_cls += focal_cost(prob, cfg.focal_alpha, cfg.focal_gamma) / max(1, len(levels))
    cost_l1 = torch.cdist(boxes / whwh, gt_boxes / whwh, p=1)
    giou = generalized_box_iou(boxes, gt_boxes)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    in_box = ((centre[:, None] > gt_boxes[None, :, :2]) & (centre[:, None] < gt_boxes[None, :, 2:])).all(-1)
    gt_centre, gt_wh = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2, gt_boxes[:, 2:] - gt_boxes[:, :2]
    in_centre = ((centre[:, None] - gt_centre[None]).abs() < cfg.center_radius * gt_wh[None]).all(-1)
    cost = cfg.l1_weight * cost_l1 + cost_cls + cfg.giou_weight * (-giou) + 100.0 * (~(in_box & in_centre)).float()
    cost[~(in_box | in_centre).any(1)] += 10000.0
    return dynamic_k_match(cost, box_iou(boxes, gt_boxes), cfg.ota_k)


def set_loss(
    level_logits: list[torch.Tensor],
    boxes: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    whwh: torch.Tensor,
    cfg: DentalLoss,
) -> dict[str, torch.Tensor]:
    """Loss of one head stage. ``level_logits``: 3 x (B, N, C_k); ``boxes`` (B, N, 4); ``targets`` per image:
    ``boxes`` (G, 4), ``labels`` (G, 3), ``levels`` (3,) bool."""
    b = boxes.shape[0]
    zero = boxes.sum() * 0.0
    ce = [zero.clone() for _ in level_logits]
    l1, giou = zero.clone(), zero.clone()
    n_sel = 0
    for i in range(b):
        tgt = targets[i]
        levels = [k for k in range(len(level_logits)) if bool(tgt["levels"][k])]
        logits_i = [lg[i] for lg in level_logits]
        sel, gt_idx = match_image(logits_i, boxes[i], tgt["boxes"], tgt["labels"], levels, whwh[i], cfg)
        sel_idx = sel.nonzero().squeeze(1)
        gidx = gt_idx.to(sel.device)[sel_idx]
        n_sel += len(sel_idx)
        for k in levels:
            onehot = torch.zeros_like(logits_i[k])
            lab = tgt["labels"][gidx, k]
            ok = lab >= 0  # a box without this level's label is no positive of it, and no negative either
            onehot[sel_idx[ok], lab[ok]] = 1.0
            counted = torch.ones_like(logits_i[k][:, :1])
            counted[sel_idx[~ok]] = 0.0
            focal = sigmoid_focal_loss(logits_i[k].float(), onehot.float(), cfg.focal_alpha, cfg.focal_gamma)
            ce[k] = ce[k] + (focal * counted).sum()
        if len(sel_idx):
            pred, gt = boxes[i][sel_idx].float(), tgt["boxes"][gidx].float()
            l1 = l1 + (pred / whwh[i] - gt / whwh[i]).abs().sum()
            giou = giou + generalized_box_iou_loss(pred, gt, reduction="sum")
    norm = max(n_sel, 1)
    out = {f"loss_ce_{k}": ce[k] / norm for k in range(len(ce))}
    out.update(loss_l1=l1 / norm, loss_giou=giou / norm)
    return out


def detection_loss(
    level_logits: list[torch.Tensor],
    boxes: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    whwh: torch.Tensor,
    cfg: DentalLoss,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum over the head stages (all six with deep supervision, else the last); per-term parts of the last
    stage for logging."""
    stages = range(boxes.shape[0]) if cfg.deep_supervision else [boxes.shape[0] - 1]
    total = boxes.sum() * 0.0
    parts: dict[str, torch.Tensor] = {}
    for s in stages:
        parts = set_loss([lg[s] for lg in level_logits], boxes[s], targets, whwh, cfg)
        total = total + cfg.l1_weight * parts["loss_l1"] + cfg.giou_weight * parts["loss_giou"]
        total = total + cfg.class_weight * sum(parts[f"loss_ce_{k}"] for k in range(len(level_logits)))
    return total, parts
