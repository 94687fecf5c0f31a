"""Training data of the ``fundus`` pipeline: one sample per REFUGE photograph with everything the three stages
need (downscaled image, disc mask and fovea for the locator; the disc ROI and its labels for the segmenter and the
classifier; the glaucoma label and reference vCDR), built through `fundus_preprocessing` as prediction does."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from medml.data.refuge import RefugeItem, check_refuge_layout, read_mask
from medml.engine.data import MedmlDataModule
from medml.errors import DataLayoutError
from medml.metrics.refuge import vcdr
from medml.pipelines.fundus.config import FundusConfig, FundusData
from medml.pipelines.fundus.model import disc_box
from medml.transforms.fundus import crop_roi, fundus_preprocessing


def read_rgb(path) -> np.ndarray:
    """A photograph as HxWx3 uint8 RGB (one-line error naming the file)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataLayoutError(f"cannot read the photograph ({exc})", path) from None


def photometric(cfg: FundusData) -> A.Compose:
    """Camera-like photometric perturbations (albumentations), applied before colour normalisation."""
    return A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=0.8),
            A.HueSaturationValue(cfg.hue_shift, cfg.hue_shift * 2, cfg.hue_shift, p=0.5),
            A.RGBShift(cfg.colour_shift, cfg.colour_shift, cfg.colour_shift, p=0.5),
            A.RandomGamma(gamma_limit=(80, 125), p=cfg.gamma_p),
            A.GaussianBlur(sigma_limit=(0.3, 1.2), p=cfg.blur_p),
        ]
    )


def reference_box(labels: np.ndarray, roi_scale: float) -> tuple[float, float, float]:
    """ROI box (centre x, centre y, side) around the reference disc."""
    found = disc_box(labels > 0, 1)
    if found is None:
        raise ValueError("the mask has no disc")
    cx, cy, diameter = found
    return cx, cy, roi_scale * diameter


class RefugeSamples(Dataset):
    """REFUGE photographs as training samples; ``train=True`` adds flips, ROI jitter and photometric augmentation."""

    def __init__(self, items: list[RefugeItem], cfg: FundusData, train: bool, seed: int = 0):
        self.items, self.cfg, self.train = items, cfg, train
        self.preprocess = fundus_preprocessing(cfg.locate_size)
        self.photometric = photometric(cfg) if train and cfg.augment else None
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        item = self.items[index]
        rgb = read_rgb(item.image_path)
        labels = read_mask(item.mask_path)
        if labels.shape != rgb.shape[:2]:
            raise DataLayoutError(f"mask size {labels.shape} differs from the image's {rgb.shape[:2]}", item.mask_path)
        if self.cfg.cache_images:
            self._cache[index] = (rgb, labels)
        return rgb, labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, cfg = self.items[index], self.cfg
        rgb, labels = self.read(index)
        height, width = labels.shape
        fovea = item.fovea
        rng = np.random.default_rng() if self.train else np.random.default_rng(self.seed + index)
        if self.train and cfg.augment:
            if rng.random() < cfg.hflip_p:
                rgb, labels = rgb[:, ::-1], labels[:, ::-1]
                fovea = None if fovea is None else (width - 1 - fovea[0], fovea[1])
            rgb = self.photometric(image=np.ascontiguousarray(rgb))["image"]
        pre = self.preprocess({"image": np.ascontiguousarray(rgb)})
        size = cfg.locate_size
        ys = np.clip(((np.arange(size) + 0.5) * height / size).astype(int), 0, height - 1)
        xs = np.clip(((np.arange(size) + 0.5) * width / size).astype(int), 0, width - 1)
        disc_small = (labels[ys][:, xs] > 0).astype(np.float32)
        try:
            cx, cy, side = reference_box(labels, cfg.roi_scale)
        except ValueError:
            raise DataLayoutError("the disc/cup mask has no disc (no pixel below 255)", item.mask_path) from None
        if self.train and cfg.augment:
            side *= 1.0 + rng.uniform(-cfg.roi_zoom, cfg.roi_zoom)
            cx += rng.uniform(-cfg.roi_shift, cfg.roi_shift) * side
            cy += rng.uniform(-cfg.roi_shift, cfg.roi_shift) * side
        box = (cx, cy, side)
        roi = crop_roi(pre["image"], box, cfg.roi_size)
        roi_label = crop_roi(labels, box, cfg.roi_size, nearest=True)
        if fovea is None:
            fovea_small, fovea_valid = (0.0, 0.0), 0.0
        else:  # original pixel centres -> locator pixel centres
            fovea_small = ((fovea[0] + 0.5) * size / width - 0.5, (fovea[1] + 0.5) * size / height - 0.5)
            fovea_valid = 1.0
        return {
            "small": torch.from_numpy(pre["small"]),
            "disc_small": torch.from_numpy(disc_small)[None],
            "fovea_small": torch.tensor(fovea_small, dtype=torch.float32),
            "fovea_valid": torch.tensor(fovea_valid),
            "roi": torch.from_numpy(np.ascontiguousarray(roi)),
            "roi_label": torch.from_numpy(roi_label.astype(np.int64))[None],
            "label": torch.tensor(float(item.label or 0)),
            "vcdr": torch.tensor(vcdr(labels), dtype=torch.float32),
        }


class FundusDataModule(MedmlDataModule):
    """REFUGE ``train`` for training, ``val`` (or, without one, a tenth of train) for validation."""

    config: FundusConfig

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        refuge = check_refuge_layout(self.data_dir, need=("train",))
        train = refuge.items("train")
        if "val" in refuge.splits and all(i.mask_path is not None and i.label is not None for i in refuge.items("val")):
            val, val_from = refuge.items("val"), "val"
        else:
            rng = np.random.default_rng(self.config.train.seed)
            order = rng.permutation(len(train))
            n_val = max(1, len(train) // 10)
            val = [train[i] for i in sorted(order[:n_val])]
            train = [train[i] for i in sorted(order[n_val:])]
            val_from = "train (10 % held out)"
        self.refuge = refuge
        self.split_summary = {
            **refuge.split_summary(),
            "validation_from": val_from,
            "n_train": len(train),
            "n_val": len(val),
        }
        cfg = self.config.data
        return RefugeSamples(train, cfg, train=True), RefugeSamples(val, cfg, train=False)
