"""LightningModule of CT-SSG: BCE on the 18 labels, whole-fold validation AUROC, decision thresholds as a buffer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medml.config import StageConfig
from medml.metrics import macro_auroc, per_label_f1_thresholds
from medml.pipelines.base import MedmlModule
from medml.pipelines.ct.config import CtConfig
from medml.pipelines.ct.model import CTSSG


def build_model(config: CtConfig, pretrained: bool) -> CTSSG:
    """The network of ``config``; ImageNet or file weights for the trunk only when ``pretrained`` (training)."""
    m, d = config.model, config.data
    return CTSSG(
        n_nodes=d.size[0] // 3,
        node_spacing_mm=3.0 * d.spacing[0],
        n_labels=len(m.labels),
        trunk_blocks=m.trunk_blocks,
        weights=m.weights if pretrained else "none",
        embed_dim=m.embed_dim,
        depth=m.depth,
        operator=m.operator,
        K=m.K,
        window=m.window,
        edge_weight=m.edge_weight,
        norm=m.norm,
        readout=m.readout,
        position_embedding=m.position_embedding,
        dropout=m.dropout,
        head_hidden=m.head_hidden,
        head_dropout=m.head_dropout,
        grad_checkpointing=m.grad_checkpointing,
        trunk_chunk=m.trunk_chunk,
    )


def choose_thresholds(targets: np.ndarray, probs: np.ndarray, rule: str, fixed: float) -> np.ndarray:
    """``fixed``: ``fixed`` for every label. ``val_f1``: each label's F1-optimal threshold on the validation fold
    (0.01..0.99), ``fixed`` for labels without a validation positive."""
    if rule == "fixed":
        return np.full(targets.shape[1], fixed, dtype=np.float32)
    return per_label_f1_thresholds(targets, probs, fallback=fixed)


class CtModule(MedmlModule):
    def __init__(self, config: CtConfig, pretrained: bool = False):
        super().__init__(config)
        self.model = build_model(config, pretrained)
        self.loss = nn.BCEWithLogitsLoss()
        n = len(config.model.labels)
        self.register_buffer("thresholds", torch.full((n,), config.evaluate.threshold))
        self._val: list[dict[str, torch.Tensor]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["label"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]), sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"]).float()
        size = len(batch["label"])
        self.log("val_loss", self.loss(logits, batch["label"]), on_epoch=True, batch_size=size, sync_dist=True)
        self._val.append({"index": batch["index"], "target": batch["label"], "probs": torch.sigmoid(logits)})

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        merged = {k: torch.cat([o[k] for o in self._val]) for k in self._val[0]}
        self._val.clear()
        gathered = {k: self.all_gather(v) for k, v in merged.items()}
        if self.trainer.world_size > 1:  # drop the DistributedSampler's padding duplicates
            gathered = {k: v.reshape(-1, *v.shape[2:]) for k, v in gathered.items()}
        _, keep = np.unique(gathered["index"].cpu().numpy(), return_index=True)
        target, probs = gathered["target"].cpu().numpy()[keep], gathered["probs"].cpu().numpy()[keep]
        self.log("val_auroc", macro_auroc(target, probs), on_epoch=True, prog_bar=True, sync_dist=True)

    def predict_probs(self, dataset, batch_size: int = 4, device=None) -> tuple[np.ndarray, np.ndarray]:
        """(targets, probabilities) over a dataset, in its order (eval mode, no grad, on ``device``, by default the
        module's own)."""
        targets, probs = [], []
        with self.evaluating(device):
            for start in range(0, len(dataset), batch_size):
                items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
                image = torch.stack([it["image"] for it in items]).to(self.device)
                probs.append(torch.sigmoid(self(image).float()).cpu().numpy())
                targets.append(torch.stack([it["label"] for it in items]).numpy())
        if not probs:
            n = len(self.config.model.labels)
            return np.zeros((0, n)), np.zeros((0, n))
        return np.concatenate(targets), np.concatenate(probs)

    def run_stage(self, stage: StageConfig, datamodule) -> dict[str, Any]:
        """``thresholds``: decision thresholds by the configured rule, from the validation fold."""
        cfg = self.config.evaluate
        targets, probs = self.predict_probs(datamodule.val_dataset, device=self.run_device())
        thresholds = choose_thresholds(targets, probs, cfg.threshold_rule, cfg.threshold)
        self.thresholds.copy_(torch.from_numpy(thresholds))
        return {
            "rule": cfg.threshold_rule,
            "thresholds": dict(zip(self.config.model.labels, map(float, thresholds))),
            "val_auroc": macro_auroc(targets, probs),
        }
