"""The ``fundus`` LightningModule: three networks trained stage by stage (locate -> segment -> classify) and the
whole-photograph inference that chains them (`FundusModule.analyse`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from medml.errors import MedmlError
from medml.metrics.refuge import vcdr as official_vcdr
from medml.pipelines.base import MedmlModule
from medml.pipelines.fundus.config import MODE_PREFIXES, FundusConfig
from medml.pipelines.fundus.model import FundusNet, disc_box, heatmap_peak, nested_labels
from medml.transforms.fundus import crop_roi, fundus_preprocessing, paste_roi


class NoDiscError(MedmlError):
    """A photograph in which the locator finds no optic disc (not a fundus photograph, or the disc out of view)."""


def gaussian_targets(centres: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(B, 2) (x, y) -> (B, size*size) normalised Gaussian heatmaps."""
    grid = torch.arange(size, device=centres.device, dtype=torch.float32)
    gx = torch.exp(-((grid[None, :] - centres[:, :1]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((grid[None, :] - centres[:, 1:]) ** 2) / (2 * sigma**2))
    heat = gy[:, :, None] * gx[:, None, :]
    heat = heat.flatten(1)
    return heat / heat.sum(dim=1, keepdim=True).clamp_min(1e-12)


def vertical_diameters(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) boolean -> (B,) largest column count (the official vertical diameter)."""
    return mask.float().sum(dim=1).amax(dim=1)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).flatten(1).sum(1)
    denom = (prob + target).flatten(1).sum(1)
    return (1 - (2 * inter + 1) / (denom + 1)).mean()


class FundusModule(MedmlModule):
    """Locator, segmenter and classifier (``self.locator``, ``self.segmenter``, ``self.classifier``); a stage's
    ``mode`` decides which one trains (`MODE_PREFIXES`) and which loss is used."""

    config: FundusConfig

    def __init__(self, config: FundusConfig, pretrained: bool = False):
        super().__init__(config)
        net = FundusNet(config.model, pretrained=pretrained)
        self.locator, self.segmenter, self.classifier = net.locator, net.segmenter, net.classifier
        loss = config.loss
        self.seg_loss = DiceCELoss(
            to_onehot_y=True, softmax=True, lambda_dice=loss.dice_weight, lambda_ce=loss.ce_weight
        )
        self.preprocess = fundus_preprocessing(config.data.locate_size)

    # ----- stages --------------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return getattr(self.stage, "mode", "all")

    def trainable_prefixes(self, stage: Any) -> list[str]:
        return MODE_PREFIXES[getattr(stage, "mode", "all")] or list(stage.trainable)

    def on_train_epoch_start(self) -> None:
        # Frozen networks run in eval mode (no batch-norm statistics drift while another stage trains).
        for name in ("locator", "segmenter", "classifier"):
            net = getattr(self, name)
            if not any(p.requires_grad for p in net.parameters()):
                net.eval()

    # ----- losses --------------------------------------------------------------------------------------------------
    def locate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.locator(batch["small"])
        disc_logit, fovea_logit = out[:, :1], out[:, 1]
        target = batch["disc_small"]
        loss = F.binary_cross_entropy_with_logits(disc_logit, target) + soft_dice_loss(disc_logit, target)
        valid = batch["fovea_valid"] > 0
        if valid.any():
            size = fovea_logit.shape[-1]
            heat = gaussian_targets(batch["fovea_small"][valid], size, self.config.data.fovea_sigma * size)
            logp = F.log_softmax(fovea_logit[valid].flatten(1).float(), dim=1)
            loss = loss + self.config.loss.fovea_weight * -(heat * logp).sum(1).mean()
        return loss

    def segment_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.seg_loss(self.segmenter(batch["roi"]), batch["roi_label"])

    def roi_masks(self, roi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, R, R) disc/cup masks and (B,) vCDR predicted by the segmenter on ROIs (cup ⊆ disc)."""
        return self.masks_from_probs(torch.softmax(self.segmenter(roi).float(), dim=1))

    def masks_from_probs(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, R, R) class probabilities -> (B, 2, R, R) disc/cup masks (cup ⊆ disc) and (B,) their vCDR."""
        disc_p = probs[:, 1] + probs[:, 2]
        disc = disc_p > self.config.model.disc_probability
        cup = disc & (probs[:, 2] > self.config.model.cup_probability * disc_p)
        ratio = vertical_diameters(cup) / (vertical_diameters(disc) + 1e-7)
        return torch.stack([disc, cup], dim=1).float(), ratio

    def classify_logits(self, roi: torch.Tensor, masks: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        size = self.config.data.cls_size
        if roi.shape[-1] != size:
            roi = F.interpolate(roi, size=(size, size), mode="bilinear", align_corners=False)
            masks = F.interpolate(masks, size=(size, size), mode="nearest")
        return self.classifier(roi, masks, ratio)

    def classify_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        roi = batch["roi"]
        if self.config.model.classifier_masks == "predicted":
            was = self.segmenter.training
            self.segmenter.eval()
            with torch.no_grad():
                masks, ratio = self.roi_masks(roi)
            self.segmenter.train(was and any(p.requires_grad for p in self.segmenter.parameters()))
        else:
            label = batch["roi_label"][:, 0]
            masks = torch.stack([label > 0, label == 2], dim=1).float()
            ratio = batch["vcdr"]
        logits = self.classify_logits(roi, masks, ratio)
        pos_weight = torch.tensor(self.config.loss.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), batch["label"], pos_weight=pos_weight)

    def stage_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mode, parts = self.mode, {}
        if mode in ("locate", "all"):
            parts["locate"] = self.locate_loss(batch)
        if mode in ("segment", "all"):
            parts["segment"] = self.segment_loss(batch)
        if mode in ("classify", "all"):
            parts["classify"] = self.classify_loss(batch)
        return parts

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = self.stage_loss(batch)
        loss = sum(parts.values())
        bs = batch["small"].shape[0]
        for name, value in parts.items():
            self.log(f"train_{name}_loss", value, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        parts = self.stage_loss(batch)
        bs = batch["small"].shape[0]
        for name, value in parts.items():
            self.log(f"val_{name}_loss", value, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("val_loss", sum(parts.values()), on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)

    # ----- inference on one photograph -----------------------------------------------------------------------------
    def analyse(
        self, rgb: np.ndarray, source: str | None = None, box: tuple[float, float, float] | None = None
    ) -> dict[str, Any]:
        """One HxWx3 RGB photograph -> ``labels`` ({0 bg, 1 rim, 2 cup} at the original size), ``vcdr`` (official
        definition), ``probability`` (glaucoma), ``fovea`` (x, y in original pixels), ``box`` (the disc ROI).

        ``box`` (centre x, centre y, side in original pixels) overrides the located disc ROI (a reader's own
        centring; benchmarks of untrained networks). Raises `NoDiscError` when the locator finds no disc. Call
        inside ``module.evaluating()``.
        """
        cfg = self.config
        height, width = rgb.shape[:2]
        pre = self.preprocess({"image": rgb})
        small = torch.from_numpy(pre["small"])[None].to(self.device)
        out = self.locator(small)[0].float().cpu().numpy()
        size = out.shape[-1]
        disc_prob = 1.0 / (1.0 + np.exp(-out[0]))
        found = disc_box(disc_prob > cfg.model.disc_threshold, int(cfg.model.min_disc_fraction * size * size))
        sx, sy = width / size, height / size
        if box is None and found is None:
            raise NoDiscError(
                "no optic disc found (the locator's disc probability stays below "
                f"{cfg.model.disc_threshold}); is this a colour fundus photograph with the disc in view?",
                source,
            )
        if box is None:
            cx, cy, diameter = found
            box = ((cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5, cfg.data.roi_scale * diameter * (sx + sy) / 2)
        roi = torch.from_numpy(crop_roi(pre["image"], box, cfg.data.roi_size))[None].to(self.device)
        probs_roi = torch.softmax(self.segmenter(roi).float(), dim=1)
        probs = paste_roi(probs_roi[0].cpu().numpy(), box, (height, width))
        labels = nested_labels(probs, cfg.model.disc_probability, cfg.model.cup_probability)
        ratio = official_vcdr(labels)
        masks, _ = self.masks_from_probs(probs_roi)
        logit = self.classify_logits(roi, masks, torch.tensor([ratio], device=self.device))
        fx, fy = heatmap_peak(out[1])
        return {
            "labels": labels,
            "vcdr": float(ratio),
            "probability": float(torch.sigmoid(logit.float())[0]),
            "fovea": ((fx + 0.5) * sx - 0.5, (fy + 0.5) * sy - 0.5),
            "box": tuple(float(v) for v in box),
        }
