"""ProtoECGNet losses (spec section 1.7), written from the formulas, vectorised.

Notation: S (B, P) similarities of one branch, Y (B, C) multi-hot labels of that branch, I (P, C) prototype-class
identity, M[b, p, c] = I[p, c] * Y[b, c].

    L = BCEWithLogits(logits, Y, pos_weight=w) + l_clst * L_clst + l_sep * L_sep + l_spars * L_spars
        + l_div * L_div + l_cnrst * L_cnrst

The classifier and fusion stages use BCE(pos_weight) + l1 * |W * (1 - I^T)|_1 instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def class_pos_weight(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """ProtoECGNet's BCE ``pos_weight`` of training labels (N, C): w_c = (sum_k n_k - n_c) / n_c (spec §1.7).

    n_c is the number of positives of class c and sum_k n_k the total number of positive labels (not of records),
    as in the official code. A class without positives gets 1 (it has no positive term to weight).
    """
    count = np.asarray(labels, dtype=np.float64).sum(axis=0)
    weight = np.ones_like(count)
    has = count > 0
    weight[has] = (count.sum() - count[has]) / count[has]
    return torch.from_numpy(weight).float()


def label_jaccard(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Jaccard co-occurrence J (C, C) of multi-hot training labels (N, C): |i and k| / (|i| + |k| - |i and k|).

    The denominator is floored at 1e-6, so a pair of classes that never occur gets 0 (also on the diagonal).
    """
    y = np.asarray(labels, dtype=np.float64)
    both = y.T @ y
    count = np.diag(both)
    union = count[:, None] + count[None, :] - both
    return torch.from_numpy(both / np.maximum(union, 1e-6)).float()


def _correct_mask(labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    return identity[None, :, :] * labels[:, None, :]  # (B, P, C)


def clustering_loss(similarity: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """-mean_{b,c} max_p S[b,p] * M[b,p,c]: pull each positive class towards its closest own prototype.

    The max also sees the zeros of masked-out prototypes (so entries are clamped below at 0) and classes absent
    from a record still count in the mean, exactly as the official loss does.
    """
    masked = similarity[:, :, None] * _correct_mask(labels, identity)
    return -masked.max(dim=1).values.mean()


def separation_loss(similarity: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """+mean_{b,c} max_p S[b,p] * (1 - M[b,p,c]): push away the closest prototype outside the correct set."""
    masked = similarity[:, :, None] * (1 - _correct_mask(labels, identity))
    return masked.max(dim=1).values.mean()


def sparsity_loss(similarity: torch.Tensor) -> torch.Tensor:
    """mean_b sum_p max(S[b,p], 0) (weight 0 in the paper)."""
    return similarity.clamp(min=0).sum(1).mean()


def _unit_prototypes(prototypes: torch.Tensor) -> torch.Tensor:
    return F.normalize(prototypes.flatten(1), dim=1)


def diversity_loss(prototypes: torch.Tensor) -> torch.Tensor:
    """|P^ P^T - I|_F^2 / P^2 on row-normalised prototypes: penalises every off-diagonal cosine."""
    unit = _unit_prototypes(prototypes)
    gram = unit @ unit.t()
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    return ((gram - eye) ** 2).sum() / gram.shape[0] ** 2


def contrastive_loss(prototypes: torch.Tensor, identity: torch.Tensor, jaccard: torch.Tensor) -> torch.Tensor:
    """Label co-occurrence contrastive loss: -(sum C*Pos_n - sum C*Neg_n) / sqrt(P).

    Pos = I J I^T (same-class pairs 1, cross-class pairs their Jaccard value), Neg = 1 - Pos, each normalised to
    sum 1; C is the prototype cosine matrix clamped to (-1, 1).
    """
    unit = _unit_prototypes(prototypes)
    cos = (unit @ unit.t()).clamp(-1 + 1e-6, 1 - 1e-6)
    positive = identity @ jaccard @ identity.t()
    negative = 1 - positive
    positive = positive / (positive.sum() + 1e-6)
    negative = negative / (negative.sum() + 1e-6)
    return -((cos * positive).sum() - (cos * negative).sum()) / math.sqrt(prototypes.shape[0])


def off_class_l1(weight: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
    """|W * (1 - I^T)|_1 for a (C, P) last layer; without an identity (fusion) the whole matrix is penalised."""
    if identity is None:
        return weight.abs().sum()
    return (weight * (1 - identity.t())).abs().sum()


class PrototypeLoss(nn.Module):
    """The joint-stage loss of one branch, with the class weights and Jaccard matrix kept as buffers.

    Args:
        pos_weight: (C,) BCE positive weights (`class_pos_weight` of the training labels).
        jaccard: (C, C) label co-occurrence (`label_jaccard` of the training labels).
        clst, sep, spars, div, cnrst: term weights; the defaults are the paper's.
    """

    def __init__(
        self,
        pos_weight: torch.Tensor,
        jaccard: torch.Tensor,
        clst: float = 0.004,
        sep: float = 0.0004,
        spars: float = 0.0,
        div: float = 250.0,
        cnrst: float = 300.0,
    ):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight.clone().float())
        self.register_buffer("jaccard", jaccard.clone().float())
        self.weights = {"clst": clst, "sep": sep, "spars": spars, "div": div, "cnrst": cnrst}

    def forward(
        self,
        logits: torch.Tensor,
        similarity: torch.Tensor,
        labels: torch.Tensor,
        prototypes: torch.Tensor,
        identity: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        terms = {
            "bce": F.binary_cross_entropy_with_logits(logits, labels, pos_weight=self.pos_weight),
            "clst": clustering_loss(similarity, labels, identity),
            "sep": separation_loss(similarity, labels, identity),
            "div": diversity_loss(prototypes),
            "cnrst": contrastive_loss(prototypes, identity, self.jaccard),
        }
        if self.weights["spars"]:
            terms["spars"] = sparsity_loss(similarity)
        terms["loss"] = terms["bce"] + sum(self.weights[k] * v for k, v in terms.items() if k != "bce")
        return terms


class ClassifierLoss(nn.Module):
    """BCE(pos_weight) + l1 * |W * (1 - I^T)|_1 for a branch's last layer or (identity None) the fusion layer."""

    def __init__(self, pos_weight: torch.Tensor, l1: float = 1e-4):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight.clone().float())
        self.l1 = l1

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, identity: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        bce = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=self.pos_weight)
        l1 = off_class_l1(weight, identity)
        return {"bce": bce, "l1": l1, "loss": bce + self.l1 * l1}
