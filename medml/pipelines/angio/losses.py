"""Losses of the RNPLL-style method (spec §A5, all [P] except where DiffRect §A4 is cited).

* supervised Dice + CE on labelled frames (MONAI ``DiceLoss`` on softmax and one-hot both multiplied by the valid
  mask, so ignored pixels drop out of both terms);
* confidence-masked pseudo-label loss: teacher weak-view pseudo-labels supervise the student's strong view
  where the teacher's softmax confidence exceeds a threshold (DiffRect uses 0.8);
* x0 latent MSE of the denoiser (DiffRect's latent loss, START_X target);
* prototype contrastive consistency (the RNPLL idea): per-class prototypes, kept as an EMA of L2-normalised masked
  mean latents, act as anchors; every latent pixel is pulled to its class prototype and pushed from the others
  with an InfoNCE over cosine similarities at temperature tau;
* ``sigmoid_rampup``: the ramp ``exp(-5 (1 - t)^2)`` of Laine & Aila, used by mean teacher and DiffRect.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from medml.data.mosxav import IGNORE_INDEX


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - t)^2)`` for t = current / rampup_length clipped to [0, 1]; 1 when ``rampup_length`` <= 0."""
    if rampup_length <= 0:
        return 1.0
    t = min(max(current / rampup_length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class MaskedDiceCE(torch.nn.Module):
    """Dice + cross-entropy over the pixels where ``mask`` is true (and the label is not ``ignore_index``).

    MONAI's ``DiceCELoss`` has no ignore index, and ``MaskedDiceLoss`` multiplies the *label ids* by the mask before
    one-hot encoding, so masked pixels count as background ground truth. Here the valid targets are one-hot encoded
    first and both the softmax and the one-hot are multiplied by the valid mask, so masked pixels add nothing to
    either Dice sum; the CE is averaged over the same pixels, and an all-ignored batch gives exactly 0 (no NaN).
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        class_weights: list[float] | None = None,
    ):
        super().__init__()
        self.dice = DiceLoss(softmax=False, to_onehot_y=False, include_background=True, batch=True)
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        # CE class weights (small classes such as balloons cover < 1 % of a frame); the mean is over weights.
        self.register_buffer(
            "class_weights", None if class_weights is None else torch.tensor(class_weights), persistent=False
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = labels != self.ignore_index
        if mask is not None:
            valid = valid & mask.bool()
        if not bool(valid.any()):
            return logits.sum() * 0.0
        safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
        nll = F.cross_entropy(logits.float(), safe, weight=self.class_weights, reduction="none") * valid
        norm = (self.class_weights[safe] * valid).sum() if self.class_weights is not None else valid.sum()
        ce = nll.sum() / norm.clamp_min(1e-6)
        weight = valid.unsqueeze(1).float()
        onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float() * weight
        dice = self.dice(torch.softmax(logits.float(), dim=1) * weight, onehot)
        return self.ce_weight * ce + self.dice_weight * dice


def confident_pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher probabilities (B, C, H, W) -> (argmax labels, confidence > threshold mask, confidence)."""
    confidence, labels = probs.max(dim=1)
    return labels, confidence > threshold, confidence


def latent_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of the x0 prediction; ``weight`` (B, 1, h, w) in [0, 1] masks latent pixels."""
    err = (pred.float() - target.float()).pow(2).mean(dim=1, keepdim=True)
    if weight is None:
        return err.mean()
    total = weight.sum()
    return (err * weight).sum() / total.clamp_min(1e-6)


def latent_labels(
    labels: torch.Tensor, stride: int, num_classes: int, min_fraction: float = 0.25, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Labels at the latent stride for prototypes: (B, H, W) -> (B, H/s, W/s).

    Thin structures (catheters, small vessels) cover a few percent of a stride-8 cell, so a plain majority vote
    would erase them: a cell takes its most frequent foreground class when that class covers at least
    ``min_fraction`` of the cell's valid pixels, background when it is entirely background, and ``ignore_index``
    otherwise (mixed cells, or cells that are mostly ignored).
    """
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float() * valid.unsqueeze(1)
    counts = F.avg_pool2d(onehot, stride)  # fraction of the cell per class
    valid_frac = F.avg_pool2d(valid.unsqueeze(1).float(), stride)[:, 0]
    frac = counts / valid_frac.unsqueeze(1).clamp_min(1e-6)
    fg_frac, fg_class = frac[:, 1:].max(dim=1)
    out = torch.full_like(fg_class, ignore_index)
    out = torch.where(frac[:, 0] >= 1.0 - 1e-6, torch.zeros_like(out), out)
    out = torch.where(fg_frac >= min_fraction, fg_class + 1, out)
    return torch.where(valid_frac >= 0.5, out, torch.full_like(out, ignore_index))


def batch_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised masked mean of L2-normalised features per class.

    Args:
        features: (B, d, h, w) latents.
        labels: (B, h, w) ids at the same stride (``ignore_index`` excluded).

    Returns:
        (prototypes (C, d), present (C,) bool): classes absent from the batch get a zero row and ``False``.
    """
    return prototypes_from_sums(*class_feature_sums(features, labels, num_classes, ignore_index))


def class_feature_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums (C, d) of L2-normalised features and pixel counts (C,): what processes all-reduce."""
    feats = F.normalize(features.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    flat = labels.reshape(-1)
    keep = flat != ignore_index
    feats, flat = feats[keep], flat[keep].long()
    sums = torch.zeros(num_classes, feats.shape[1], device=feats.device, dtype=feats.dtype)
    sums.index_add_(0, flat, feats)
    return sums, torch.bincount(flat, minlength=num_classes)


def prototypes_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised prototypes (C, d), present (C,)) from class sums and counts (the mean's direction = the sum's)."""
    present = counts > 0
    return F.normalize(sums, dim=1) * present.unsqueeze(1), present


@torch.no_grad()
def update_prototypes(
    prototypes: torch.Tensor,
    initialised: torch.Tensor,
    batch_protos: torch.Tensor,
    present: torch.Tensor,
    momentum: float,
) -> None:
    """EMA update in place: ``p_c <- normalise(m p_c + (1 - m) b_c)`` for classes in the batch.

    A class seen for the first time takes the batch prototype as is (no pull towards the zero initial value).
    """
    fresh = present & ~initialised
    mixed = F.normalize(momentum * prototypes + (1.0 - momentum) * batch_protos, dim=1)
    new = torch.where(fresh.unsqueeze(1), batch_protos, torch.where(present.unsqueeze(1), mixed, prototypes))
    prototypes.copy_(new)
    initialised.copy_(initialised | present)


def prototype_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    initialised: torch.Tensor,
    temperature: float,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``-mean_i log softmax_c(cos(z_i, p_c) / tau)[y_i]`` over latent pixels whose class has a prototype.

    Classes without a prototype yet are left out of the denominator too, so the loss is well defined from step 1.
    """
    logits = torch.einsum("bdhw,cd->bchw", F.normalize(features.float(), dim=1), prototypes.float()) / temperature
    logits = logits.masked_fill(~initialised.view(1, -1, 1, 1), -1e4)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    valid = valid & initialised[safe]
    if not bool(valid.any()):
        return features.sum() * 0.0
    nll = F.cross_entropy(logits, safe, reduction="none")
    return (nll * valid).sum() / valid.sum()


def prototype_alignment(
    protos_a: torch.Tensor, present_a: torch.Tensor, protos_b: torch.Tensor, present_b: torch.Tensor
) -> torch.Tensor:
    """``mean_c ||p_c^L - p_c^U||^2`` over classes present in both batches (the optional §A5.5 term)."""
    both = present_a & present_b
    if not bool(both.any()):
        return protos_a.sum() * 0.0
    return (protos_a[both] - protos_b[both]).pow(2).sum(dim=1).mean()
