"""DENTEX tiers as detection datasets: one per hierarchy stage, chosen by the stage the module is in.

Samples go through `medml.transforms.detection.DetectionTransform` (DiffusionDet's input pipeline, spec §1.1):
short side drawn from ``data.train_min_sizes`` (``data.min_size`` at test), long side capped at ``max_size``, the
optional absolute-range crop, a left-right flip that remaps quadrants (1<->2, 3<->4; the released code flips without
it, spec §2.8) and detectron2's pixel normalisation; the previous stage's prior boxes move with the GT boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medml.data import dentex
from medml.engine.data import MedmlDataModule, eval_loader, train_loader
from medml.pipelines.dental.config import TIER_LEVELS, DentalConfig, DentalData, DentalStage
from medml.transforms.detection import DetectionTransform, detection_collate, to_image_tensor

#: stage tier -> DENTEX tier folder of the data adapter
DATA_TIER = {"quadrant": "quadrant", "enumeration": "enumeration", "diagnosis": "disease"}


def transform(cfg: DentalData, train: bool) -> DetectionTransform:
    return DetectionTransform(
        train=train,
        short_sizes=cfg.train_min_sizes,
        max_size=cfg.max_size,
        test_size=cfg.min_size,
        flip_p=cfg.hflip_p,
        label_remap=dentex.flip_quadrant_labels,
        crop=tuple(cfg.crop) if cfg.crop else None,
        box_keys=("boxes", "priors"),
        row_keys=("labels",),
    )


def level_mask(image: dentex.DentexImage) -> torch.Tensor:
    """Which of the three levels this image's tier annotates (a missing level gives no loss)."""
    levels = image.levels or tuple(lv for k, lv in enumerate(dentex.LEVELS) if (image.labels[:, k] >= 0).all())
    return torch.tensor([lv in levels for lv in dentex.LEVELS])


def network_sample(grey: np.ndarray, cfg: DentalData, **extra: Any) -> dict[str, Any]:
    """A panoramic (grey HxW in [0, 1]) as a test-time network sample (no boxes)."""
    sample = {
        "image": to_image_tensor(grey),
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, 3, dtype=torch.long),
        "priors": torch.zeros(0, 4),
        "levels": torch.ones(3, dtype=torch.bool),
        **extra,
    }
    return transform(cfg, train=False)(sample)


class DentexDetection(Dataset):
    """Samples of one tier's split. ``priors`` (case id -> (K, 4) xyxy pixels of the source image) are the
    previous stage's detections, set by the module before a stage that injects them."""

    def __init__(self, images: list[dentex.DentexImage], config: DentalConfig, train: bool):
        self.images, self.train = list(images), train
        self.transform = transform(config.data, train)
        self.priors: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        im = self.images[index]
        grey, _ = dentex.read_panoramic(im.image_path)
        prior = np.asarray(self.priors.get(im.case_id, np.zeros((0, 4))), np.float32).reshape(-1, 4)
        sample = {
            "image": to_image_tensor(grey),
            "boxes": torch.as_tensor(np.asarray(im.boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(im.labels, np.int64).reshape(-1, 3)),
            "priors": torch.as_tensor(prior),
            "levels": level_mask(im),
            "case_id": im.case_id,
        }
        return self.transform(sample)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """`detection_collate` (images padded to a multiple of 32, image sizes, per-image targets) as a dict."""
    images, sizes, targets = detection_collate(samples)
    for t in targets:
        t["priors"] = torch.as_tensor(t.get("priors", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
    return {"images": images, "image_sizes": sizes, "targets": targets, "case_ids": [t.get("case_id") for t in targets]}


class DentexData(MedmlDataModule):
    """All tiers the stages need, split by `medml.data.dentex.split_dentex`; the loaders serve the current stage."""

    collate_fn = staticmethod(collate)

    def build_datasets(self):
        cfg = self.config
        tiers = sorted({DATA_TIER[s.tier] for s in cfg.stages if s.enabled})
        need = [*tiers, "validation"] if "disease" in tiers else tiers
        present = dentex.available_tiers(self.data_dir)
        data = dentex.load_dentex(self.data_dir, tiers=[t for t in need if t != "validation" or t in present])
        if cfg.data.exclude_overlap:
            data = dentex.drop_duplicates(data, dentex.find_cross_tier_duplicates(data))
        self.splits = dentex.split_dentex(
            data, val_fraction=cfg.data.val_fraction, seed=cfg.data.split_seed, external_test="validation" in data
        )
        self.datasets = {
            tier: (DentexDetection(parts["train"], cfg, True), DentexDetection(parts["val"], cfg, False))
            for tier, parts in self.splits.items()
        }
        self.split_summary = {
            tier: {split: len(items) for split, items in parts.items()} for tier, parts in self.splits.items()
        }
        first = DATA_TIER[next(s.tier for s in cfg.stages if s.enabled)]
        return self.datasets[first]

    def stage_tier(self) -> str:
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        tier = getattr(getattr(module, "stage", None), "tier", None)
        return DATA_TIER[tier] if tier else next(iter(self.datasets))

    def train_dataloader(self):
        return train_loader(self.datasets[self.stage_tier()][0], self.config.train, collate_fn=collate)

    def val_dataloader(self):
        return eval_loader(self.datasets[self.stage_tier()][1], self.config.train, collate_fn=collate)


def split_images(data_dir: Path, config: DentalConfig, split: str) -> list[dentex.DentexImage]:
    """The fully labelled images of ``split`` (test = ``validation_triple.json``, the public labelled hold-out)."""
    dm = DentexData(data_dir, config.model_copy(update={"stages": [DentalStage(tier="diagnosis")]}))
    dm.setup()
    parts = dm.splits["disease"]
    if split not in parts:
        raise ValueError(f"unknown split {split}")
    return parts[split]


__all__ = ["TIER_LEVELS", "DentexData", "DentexDetection", "collate", "network_sample", "split_images"]
