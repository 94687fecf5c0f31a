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

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        pixel_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask`` (B, H, W) bool drops pixels; ``pixel_weight`` (B, H, W) in [0, 1] scales each pixel's share of
        both terms (the prototype denoising of pseudo-labels)."""
        valid = labels != self.ignore_index
        if mask is not None:
            valid = valid & mask.bool()
        if not bool(valid.any()):
            return logits.sum() * 0.0
        w = valid.float() if pixel_weight is None else valid.float() * pixel_weight.float()
        safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
        nll = F.cross_entropy(logits.float(), safe, weight=self.class_weights, reduction="none") * w
        norm = (self.class_weights[safe] * w).sum() if self.class_weights is not None else w.sum()
        ce = nll.sum() / norm.clamp_min(1e-6)
        weight = w.unsqueeze(1)
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


def prototype_probabilities(
    features: torch.Tensor, prototypes: torch.Tensor, initialised: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft prototype assignment (B, C, h, w) of latent cells: softmax over initialised classes of cos / tau."""
    logits = torch.einsum("bdhw,cd->bchw", F.normalize(features.float(), dim=1), prototypes.float()) / temperature
    return torch.softmax(logits.masked_fill(~initialised.view(1, -1, 1, 1), -1e4), dim=1)


def prototype_consistency(
    student: torch.Tensor,
    teacher: torch.Tensor,
    prototypes: torch.Tensor,
    initialised: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Cross-entropy of the student's prototype assignment against the teacher's (soft targets, no gradient to the
    teacher), averaged over latent cells: the teacher-student form of the prototype contrastive consistency."""
    if not bool(initialised.any()):
        return student.sum() * 0.0
    target = prototype_probabilities(teacher.detach(), prototypes, initialised, temperature)
    logits = torch.einsum("bdhw,cd->bchw", F.normalize(student.float(), dim=1), prototypes.float()) / temperature
    log_q = torch.log_softmax(logits.masked_fill(~initialised.view(1, -1, 1, 1), -1e4), dim=1)
    return -(target * log_q).sum(dim=1).mean()


def prototype_denoise(
    labels: torch.Tensor,
    probs: torch.Tensor,
    initialised: torch.Tensor,
    mode: str,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check pixel pseudo-labels against the prototype assignment of their latent cell.

    Args:
        labels: (B, H, W) pseudo-labels (``ignore_index`` kept as is).
        probs: (B, C, h, w) prototype probabilities of the teacher's denoised latent cells
            (`prototype_probabilities`), upsampled here to the pixels (bilinear).
        initialised: (C,) classes that have a prototype; pixels of other classes are left alone (weight 1).
        mode: ``"weight"``: each pixel's weight is the probability of its pseudo-label's prototype;
            ``"relabel"``: a foreground pixel whose cell is assigned to another foreground class takes that class,
            one whose cell is assigned to background is ignored (background pixels are kept: cells are coarser than
            thin structures); ``"none"``: unchanged.

    Returns:
        (labels, pixel weights (B, H, W) in [0, 1]).
    """
    weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    if mode == "none" or not bool(initialised.any()):
        return labels, weights
    up = F.interpolate(probs.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    known = initialised[safe] & valid
    if mode == "weight":
        prob = up.gather(1, safe.unsqueeze(1))[:, 0]
        return labels, torch.where(known, prob, weights)
    assigned = up.argmax(dim=1)
    disagree = known & (safe > 0) & (assigned != safe)
    relabelled = torch.where(disagree & (assigned > 0), assigned.to(labels.dtype), labels)
    relabelled = torch.where(disagree & (assigned == 0), torch.full_like(labels, ignore_index), relabelled)
    return relabelled, weights


def corrupt_labels(
    labels: torch.Tensor, fraction: float, generator: torch.Generator, tile: int = 16, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pseudo-label noise for the stress test: each ``tile``-pixel square is corrupted with probability ``fraction``,
    by one of three kinds drawn uniformly: thin structures / foreground removed (set to background), foreground
    flipped to another foreground class plus a spurious blob, or the boundary shifted (labels moved by a quarter
    tile). Ignored pixels stay ignored."""
    if fraction <= 0:
        return labels
    out = labels.clone()
    b, h, w = labels.shape
    num_classes = int(labels[labels != ignore_index].max().item()) + 1 if bool((labels != ignore_index).any()) else 2
    num_classes = max(num_classes, 5)
    shift = max(1, tile // 4)
    shifted = torch.roll(labels, shifts=(shift, shift), dims=(1, 2))
    for i in range(b):
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                if float(torch.rand(1, generator=generator)) >= fraction:
                    continue
                kind = int(torch.randint(0, 3, (1,), generator=generator))
                patch = out[i, y : y + tile, x : x + tile]
                fg = (patch > 0) & (patch != ignore_index)
                if kind == 0:
                    patch[fg] = 0
                elif kind == 1:
                    offset = int(torch.randint(1, num_classes - 1, (1,), generator=generator))
                    patch[fg] = (patch[fg] - 1 + offset) % (num_classes - 1) + 1
                    r = tile // 4
                    cy, cx = [int(v) for v in torch.randint(r, max(r + 1, tile - r), (2,), generator=generator)]
                    blob = patch[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r]
                    blob[blob != ignore_index] = int(torch.randint(1, num_classes, (1,), generator=generator))
                else:
                    patch.copy_(shifted[i, y : y + tile, x : x + tile])
    return torch.where(labels == ignore_index, labels, out)
