"""DENTEX tiers as detection datasets: one per hierarchy stage, chosen by the stage the module is in.

Each sample is the panoramic resized so its short side is ``data.min_size`` (a random ``train_min_sizes`` entry when
training, long side capped at ``max_size``), flipped left-right with quadrant remapping (1<->2, 3<->4; the released
code flips without it, spec §2.8), as three identical channels normalised with detectron2's pixel statistics;
boxes (and any prior boxes of the previous stage) follow the same resize and flip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medml.data import dentex
from medml.engine.data import MedmlDataModule, eval_loader, train_loader
from medml.pipelines.dental.config import TIER_LEVELS, DentalConfig, DentalStage
from medml.pipelines.dental.model import PIXEL_MEAN, PIXEL_STD

#: stage tier -> DENTEX tier folder of the data adapter
DATA_TIER = {"quadrant": "quadrant", "enumeration": "enumeration", "diagnosis": "disease"}
FLIP_QUADRANT = np.array([1, 0, 3, 2])  # quadrant index after a left-right flip (1<->2, 3<->4)


def resize_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int, float]:
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale)), scale


def to_network(grey: np.ndarray, short: int, max_size: int) -> tuple[torch.Tensor, float]:
    """Grey [0, 1] (H, W) -> normalised (3, h, w) at the recipe's scale, and that scale."""
    h, w = grey.shape
    nh, nw, scale = resize_shape(h, w, short, max_size)
    x = torch.from_numpy(np.ascontiguousarray(grey, np.float32))[None, None] * 255.0
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor(PIXEL_MEAN)[:, None, None]
    std = torch.tensor(PIXEL_STD)[:, None, None]
    return (x.expand(3, -1, -1) - mean) / std, scale


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def level_mask(image: dentex.DentexImage) -> torch.Tensor:
    """Which of the three levels this image's tier annotates (a missing level gives no loss)."""
    levels = image.levels or tuple(lv for k, lv in enumerate(dentex.LEVELS) if (image.labels[:, k] >= 0).all())
    return torch.tensor([lv in levels for lv in dentex.LEVELS])


class DentexDetection(Dataset):
    """Samples of one tier's split. ``priors`` (case id -> (K, 4) xyxy pixels of the source image) are the
    previous stage's detections, set by the module before a stage that injects them."""

    def __init__(self, images: list[dentex.DentexImage], config: DentalConfig, train: bool):
        self.images, self.cfg, self.train = list(images), config.data, train
        self.priors: dict[str, np.ndarray] = {}
        self.epoch_seed = config.train.seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        im = self.images[index]
        grey, _ = dentex.read_panoramic(im.image_path)
        rng = np.random.default_rng() if self.train else None
        short = int(rng.choice(self.cfg.train_min_sizes)) if rng is not None else self.cfg.min_size
        image, scale = to_network(grey, short, self.cfg.max_size)
        boxes = np.asarray(im.boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(im.labels, np.int64).reshape(-1, 3).copy()
        prior = np.asarray(self.priors.get(im.case_id, np.zeros((0, 4))), np.float32).reshape(-1, 4)
        width = grey.shape[1]
        if rng is not None and rng.random() < self.cfg.hflip_p:
            image = image.flip(-1)
            boxes, prior = flip_boxes(boxes, width), flip_boxes(prior, width)
            has_q = labels[:, 0] >= 0
            labels[has_q, 0] = FLIP_QUADRANT[labels[has_q, 0]]
        return {
            "image": image,
            "boxes": torch.from_numpy(boxes * scale),
            "labels": torch.from_numpy(labels),
            "levels": level_mask(im),
            "priors": torch.from_numpy(prior * scale),
            "scale": scale,
            "case_id": im.case_id,
            "index": index,
        }


def pad_batch(images: list[torch.Tensor], divisor: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (the normalised mean) to a common size divisible by ``divisor``; (B, 3, H, W) and (B, 2) sizes."""
    sizes = torch.tensor([im.shape[-2:] for im in images])
    h, w = (int(-(-int(v) // divisor) * divisor) for v in sizes.max(0).values)
    batch = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[1], : im.shape[2]] = im
    return batch, sizes


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    images, sizes = pad_batch([s["image"] for s in samples])
    targets = [{k: s[k] for k in ("boxes", "labels", "levels", "priors")} for s in samples]
    return {
        "images": images,
        "image_sizes": sizes,
        "targets": targets,
        "scales": [s["scale"] for s in samples],
        "case_ids": [s["case_id"] for s in samples],
    }


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


__all__ = ["TIER_LEVELS", "DentexData", "DentexDetection", "collate", "split_images", "to_network"]
