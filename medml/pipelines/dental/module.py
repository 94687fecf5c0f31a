"""The HierarchicalDet LightningModule: one detector trained through the hierarchy stages.

Each stage (`DentalStage`, ``tier: quadrant | enumeration | diagnosis``) trains on its tier with that tier's label
levels, starting from the weights the previous stage left (the engine keeps the module across stages and restores
each stage's best checkpoint). Before a stage that follows another, the module runs the current weights (= the
previous stage's model) over the new tier's training images and keeps detections with score >= ``prior_score``
(ranked at the previous stage's level) as the prior boxes that ``hierarchy.inject`` feeds into the noised proposals.
Validation runs DDIM sampling on the stage tier's val split and logs COCO AP per supervised level.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from medml.config import StageConfig
from medml.pipelines.base import MedmlModule
from medml.pipelines.dental.baselines import TorchvisionBaseline
from medml.pipelines.dental.config import LEVELS, TIER_LEVELS, DentalConfig, DentalStage
from medml.pipelines.dental.data import DATA_TIER, DentexDetection, collate
from medml.pipelines.dental.evaluate import all_levels
from medml.pipelines.dental.losses import detection_loss
from medml.pipelines.dental.model import HierarchicalDiffusionDet
from medml.transforms.detection import boxes_to_original


def build_model(config: DentalConfig, pretrained: bool = False) -> torch.nn.Module:
    if config.model.arch == "diffusiondet":
        return HierarchicalDiffusionDet(config.model, pretrained)
    return TorchvisionBaseline(config, pretrained)


class DentalModule(MedmlModule):
    config: DentalConfig
    stage: DentalStage

    def __init__(self, config: DentalConfig, pretrained: bool = False, datamodule: Any = None):
        super().__init__(config)
        self.model = build_model(config, pretrained)
        # frozen by design (stem + res2, FrozenBN): no stage unfreezes them
        self._frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        self.datamodule_ref = datamodule
        self._val: list[tuple[str, dict[str, np.ndarray]]] = []

    # ----- stages -------------------------------------------------------------------------------------------------
    def stage_level(self, stage: StageConfig | None = None) -> int:
        """Deepest label level the stage supervises (0 quadrant, 1 tooth, 2 diagnosis): it ranks detections."""
        return TIER_LEVELS[getattr(stage or self.stage, "tier", "diagnosis")] - 1

    def stage_parameters(self, stage: StageConfig) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for name, param in super().stage_parameters(stage):
            if name not in self._frozen:
                yield name, param

    def previous_stage(self, stage: DentalStage) -> DentalStage | None:
        enabled = [s for s in self.config.stages if s.enabled]
        i = next(i for i, s in enumerate(enabled) if s.name == stage.name)
        return enabled[i - 1] if i > 0 else None

    def start_stage(self, stage: DentalStage) -> None:
        super().start_stage(stage)
        self._prior_count: float | None = None
        dm = self.datamodule_ref
        prev = self.previous_stage(stage)
        if (
            dm is None
            or prev is None
            or self.config.hierarchy.inject == "none"
            or self.config.model.arch != "diffusiondet"
        ):
            return
        train_set: DentexDetection = dm.datasets[DATA_TIER[stage.tier]][0]
        train_set.priors = self.prior_boxes(train_set, self.stage_level(prev))
        self._prior_count = float(np.mean([len(b) for b in train_set.priors.values()])) if train_set.priors else 0.0

    def on_train_epoch_end(self) -> None:
        if getattr(self, "_prior_count", None) is not None:  # recorded so a run shows what was injected
            self.log("prior_boxes_per_image", self._prior_count)

    def prior_boxes(self, dataset: DentexDetection, level: int) -> dict[str, np.ndarray]:
        """The current model's detections (score >= hierarchy.prior_score) per image, in source pixels."""
        h = self.config.hierarchy
        plain = DentexDetection(dataset.images, self.config, train=False)
        dets = self.predict_dataset(plain, level=level, steps=h.prior_steps, device=self.run_device())
        return {cid: d["boxes"][d["scores"] >= h.prior_score] for cid, d in dets}

    # ----- training ------------------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, sizes, targets = batch["images"], batch["image_sizes"].to(self.device), batch["targets"]
        if self.config.model.arch != "diffusiondet":
            return self.model.loss(images, sizes, targets)
        inject = self.config.hierarchy.inject
        priors = [t["priors"] for t in targets] if inject != "none" else None
        proposals, t = self.model.noised_proposals([t["boxes"] for t in targets], sizes, priors, inject)
        levels, boxes = self.model(images, proposals, t)
        return detection_loss(levels, boxes, targets, self.model.whwh(sizes), self.config.loss)

    def training_step(self, batch, batch_idx):
        loss, parts = self.training_loss(batch)
        bs = len(batch["targets"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=bs)
        for key, value in parts.items():
            self.log(f"train_{key}", value.detach(), on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # ----- detection ------------------------------------------------------------------------------------------------
    def detect_batch(self, batch: dict[str, Any], level: int | None = None, steps: int | None = None, **kw):
        """Detections of a collated batch in source-image pixels, as numpy arrays."""
        level = self.stage_level() if level is None else level
        images, sizes = batch["images"].to(self.device), batch["image_sizes"].to(self.device)
        out = []
        for det, target in zip(self.model.detect(images, sizes, level=level, steps=steps, **kw), batch["targets"]):
            item = {k: v.cpu().numpy() for k, v in det.items() if k != "steps"}
            item["boxes"] = boxes_to_original(det["boxes"].float().cpu(), target).numpy()
            if "steps" in det:
                item["steps"] = [
                    {
                        **s,
                        "proposals": boxes_to_original(s["proposals"], target),
                        "boxes": boxes_to_original(s["boxes"], target),
                    }
                    for s in det["steps"]
                ]
            out.append(item)
        return out

    def predict_dataset(self, dataset, level: int = 2, steps: int | None = None, device=None):
        """[(case id, detections)] over a dataset, in eval mode on ``device`` (default: where the module is)."""
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.config.train.batch_size, collate_fn=collate, num_workers=0
        )
        found = []
        with self.evaluating(device):
            for batch in loader:
                found += list(zip(batch["case_ids"], self.detect_batch(batch, level=level, steps=steps)))
        return found

    # ----- validation ---------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch, batch_idx):
        self._val += list(zip(batch["case_ids"], self.detect_batch(batch)))

    def on_validation_epoch_end(self) -> None:
        dm = self.datamodule_ref
        if dm is None or not self._val:
            return
        images = dm.datasets[DATA_TIER[self.stage.tier]][1].images
        dets = dict(self._val)
        result = all_levels(images, dets)
        aps, ap50s = [], []
        for level in LEVELS[: self.stage_level() + 1]:  # the levels this stage supervises
            m = result[level]
            aps.append(0.0 if math.isnan(m["AP"]) else m["AP"])
            ap50s.append(0.0 if math.isnan(m["AP50"]) else m["AP50"])
            self.log(f"val_ap_{level}", aps[-1], sync_dist=True)
        self.log("val_ap", float(np.mean(aps)), prog_bar=True, sync_dist=True)
        self.log("val_ap50", float(np.mean(ap50s)), sync_dist=True)
        self._val = []
