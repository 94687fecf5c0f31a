"""Networks of the ``fundus`` pipeline and the post-processing between them.

* locator: MONAI U-Net on the downscaled photograph with two outputs, the optic disc (logit) and the fovea heatmap
  (logit of a spatial softmax); the disc's largest component gives the ROI centre and size (M-Net / JunMa
  pattern, spec B7 (a)), the heatmap's peak the fovea (heatmap regression, B7 (g)).
* segmenter: MONAI U-Net, 3 classes (background, rim, cup) on the disc ROI; post-processing enforces cup ⊆ disc
  and keeps the largest component of each with holes filled (B7 (c)).
* classifier: torchvision EfficientNet on the ROI with the disc and cup masks as two extra input channels (JunMa's
  5-channel input [V]) and the vCDR as an extra feature of the head (B7 (f)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import UNet
from scipy import ndimage
from torch import nn
from torchvision import models

from medml.errors import ConfigError
from medml.pipelines.fundus.config import FundusModel


def unet(in_channels: int, out_channels: int, channels: list[int], res_units: int) -> UNet:
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple([2] * (len(channels) - 1)),
        num_res_units=res_units,
        norm="batch",
    )


def _efficientnet(name: str, weights: str, pretrained: bool) -> nn.Module:
    """torchvision EfficientNet; ImageNet weights through torchvision's weights API (or a local state dict) when
    ``pretrained``, random weights otherwise (prediction loads a checkpoint anyway)."""
    builder = getattr(models, name)
    if not pretrained or weights == "none":
        return builder(weights=None)
    if weights == "imagenet":
        try:
            return builder(weights="IMAGENET1K_V1")
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise ConfigError(
                f"model.weights: cannot fetch the ImageNet weights of {name} ({type(exc).__name__}); on an offline "
                "machine set model.weights to a local torchvision state dict (.pth) or to 'none'"
            ) from None
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"model.weights: '{weights}' is neither 'imagenet', 'none' nor an existing file")
    net = builder(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except Exception as exc:  # noqa: BLE001 - any failure is the same user error
        raise ConfigError(f"model.weights: not a {name} state dict ({type(exc).__name__}: {exc})", path) from None
    return net


class GlaucomaClassifier(nn.Module):
    """EfficientNet over (ROI RGB, disc mask, cup mask); head on [pooled features, vCDR]."""

    def __init__(self, name: str, weights: str, pretrained: bool, vcdr_feature: bool = True):
        super().__init__()
        net = _efficientnet(name, weights, pretrained)
        stem: nn.Conv2d = net.features[0][0]
        conv = nn.Conv2d(5, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        with torch.no_grad():  # keep the (pretrained) RGB filters; the masks start from their mean
            conv.weight[:, :3] = stem.weight
            conv.weight[:, 3:] = stem.weight.mean(dim=1, keepdim=True)
        net.features[0][0] = conv
        self.features, self.pool = net.features, nn.AdaptiveAvgPool2d(1)
        width = net.classifier[-1].in_features
        self.vcdr_feature = vcdr_feature
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(width, 1)
        # vCDR term w (vCDR - c), starting from the clinical prior that a larger vCDR means glaucoma (w = 10, c = 0.5)
        # rather than from zero: a random-init head needs thousands of steps to find a one-dimensional cue.
        self.vcdr_weight = nn.Parameter(torch.tensor(10.0 if vcdr_feature else 0.0), requires_grad=vcdr_feature)
        self.vcdr_centre = nn.Parameter(torch.tensor(0.5), requires_grad=vcdr_feature)

    def forward(self, image: torch.Tensor, masks: torch.Tensor, vcdr: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(torch.cat([image, masks], dim=1))).flatten(1)
        logit = self.head(self.dropout(x)).squeeze(1)
        if self.vcdr_feature:
            logit = logit + self.vcdr_weight * (vcdr.view(-1).to(logit.dtype) - self.vcdr_centre)
        return logit


class Locator(nn.Module):
    """U-Net with two output maps: disc logit and fovea heatmap logit. The disc logit starts from the prior of a
    small structure (logit -4, about 2 % of the image) instead of 0.5 everywhere, without which the first hundred
    steps only learn the background rate."""

    DISC_PRIOR = -4.0

    def __init__(self, channels: list[int], res_units: int):
        super().__init__()
        self.net = unet(3, 2, channels, res_units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return torch.cat([out[:, :1] + self.DISC_PRIOR, out[:, 1:]], dim=1)


class FundusNet(nn.Module):
    def __init__(self, cfg: FundusModel, pretrained: bool = False):
        super().__init__()
        self.locator = Locator(cfg.locator_channels, cfg.res_units)
        self.segmenter = unet(3, 3, cfg.segmenter_channels, cfg.res_units)
        self.classifier = GlaucomaClassifier(cfg.classifier, cfg.weights, pretrained, cfg.vcdr_feature)


# ----- post-processing ------------------------------------------------------------------------------------------------
def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def disc_box(disc: np.ndarray, min_pixels: int) -> tuple[float, float, float] | None:
    """(centre x, centre y, diameter) of the largest disc component in pixels of ``disc``; None if too small."""
    disc = largest_component(disc)
    if disc.sum() < max(1, min_pixels):
        return None
    ys, xs = np.nonzero(disc)
    diameter = float(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    return float(xs.mean()), float(ys.mean()), diameter


def nested_labels(probs: np.ndarray, disc_p: float = 0.5, cup_p: float = 0.5) -> np.ndarray:
    """(3, H, W) class probabilities -> labels {0, 1 rim, 2 cup} with cup ⊆ disc, each one filled component.

    The connected-component work runs on the bounding box of the candidate disc only (a few percent of a
    photograph)."""
    disc_prob = probs[1] + probs[2]
    labels = np.zeros(disc_prob.shape, np.uint8)
    candidate = disc_prob > disc_p
    if not candidate.any():
        return labels
    rows, cols = np.nonzero(candidate.any(axis=1))[0], np.nonzero(candidate.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    disc = ndimage.binary_fill_holes(largest_component(candidate[box]))
    cup = disc & (probs[2][box] > cup_p * np.maximum(disc_prob[box], 1e-6))
    cup = ndimage.binary_fill_holes(largest_component(cup)) & disc
    view = labels[box]
    view[disc] = 1
    view[cup] = 2
    return labels


def heatmap_peak(logits: np.ndarray) -> tuple[float, float]:
    """(x, y) of a heatmap's peak, refined by the softmax-weighted mean of its 5x5 neighbourhood."""
    h, w = logits.shape
    y0, x0 = np.unravel_index(int(np.argmax(logits)), logits.shape)
    ys, xs = slice(max(0, y0 - 2), min(h, y0 + 3)), slice(max(0, x0 - 2), min(w, x0 + 3))
    patch = logits[ys, xs].astype(np.float64)
    weights = np.exp(patch - patch.max())
    gy, gx = np.mgrid[ys, xs]
    return float((weights * gx).sum() / weights.sum()), float((weights * gy).sum() / weights.sum())
